package sigv4

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"
)

// Sign signs r, whose body is body, with SigV4 in the Authorization
// header, as AWS KMS signs its requests to an external key store proxy:
// the signed headers are host and x-amz-date, the payload's SHA-256 is in
// the canonical request, and the scope is date/region/service/aws4_request.
// It sets X-Amz-Date and Authorization, replacing any earlier ones. It is
// the signer that matches Verifier: what one signs, the other accepts.
func Sign(r *http.Request, body []byte, accessKeyID, secret, region, service string, t time.Time) {
	t = t.UTC()
	date := t.Format(amzDate)
	r.Header.Del("Authorization")
	r.Header.Set("X-Amz-Date", date)
	if r.Host == "" && r.URL != nil {
		r.Host = r.URL.Host
	}
	signed := []string{"host", "x-amz-date"}
	payload := sha256.Sum256(body)
	creq := canonicalRequest(r, signed, hex.EncodeToString(payload[:]), false)
	sum := sha256.Sum256([]byte(creq))
	day := date[:8]
	scope := day + "/" + region + "/" + service + "/" + terminator
	sts := algorithm + "\n" + date + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	k := hmacSHA256([]byte("AWS4"+secret), []byte(day))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	k = hmacSHA256(k, []byte(terminator))
	sig := hex.EncodeToString(hmacSHA256(k, []byte(sts)))
	r.Header.Set("Authorization", algorithm+" Credential="+accessKeyID+"/"+scope+", SignedHeaders=host;x-amz-date, Signature="+sig)
}
