"""An S3-compatible artifact endpoint: each tracking server's artifact store as a bucket.

Served on the daemon's one port and told apart by its SigV4 scope (service ``s3``, in the
``Authorization`` header or a presigned URL's query), so ``aws s3``, boto3 and MLflow's S3
artifact repository (what the sagemaker-mlflow plugin uses) reach it through the same
``endpoint_url`` as every other API. Path-style addressing: ``/<bucket>/<key>``.

* ``mlflow_api.s3_view``: a server's bucket name, and back.
* ``objects``: the S3 operations, carried out by the server's MLflow worker through MLflow's
  own artifact API (so the sandbox, the store's credentials and full-disk handling are the
  worker's, as for every other artifact transfer); multipart parts wait in the data dir.
* ``endpoint``: authentication, the IAM check (``s3:GetObject``, ``s3:PutObject``,
  ``s3:DeleteObject``, ``s3:ListBucket``, ``s3:AbortMultipartUpload``,
  ``s3:ListAllMyBuckets`` on ``arn:aws:s3:::<bucket>[/<key>]``), data events for writes,
  and S3's XML answers and errors (``responses``).
"""
