// Package wire speaks the AWS JSON 1.1 protocol as the AWS SDKs and CLI use
// it against KMS: POST / with X-Amz-Target "TrentService.<Operation>",
// JSON bodies with base64 blobs and epoch-second timestamps, and errors as
// {"__type": ..., "message": ...} with AWS's HTTP status. It knows nothing of
// keys or tokens; the kms package supplies the operations.
package wire
