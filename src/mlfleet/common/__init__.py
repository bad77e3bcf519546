"""Small helpers every layer may use: time stamps, paging tokens, tag switches."""
