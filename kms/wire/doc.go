// Package wire speaks the AWS JSON 1.1 protocol as the AWS SDKs and CLI use
// it against KMS: POST / with X-Amz-Target "TrentService.<Operation>",
// JSON bodies with base64 blobs and epoch-second timestamps, and errors as
// {"__type": ..., "message": ...} with AWS's HTTP status. Limiter bounds the
// requests served at once, before their bodies are read, answering the
// excess as AWS throttles. It knows nothing of keys or tokens; the kms
// package supplies the operations.
package wire
