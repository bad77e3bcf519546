from mlfleet.cli.main import app

app()
