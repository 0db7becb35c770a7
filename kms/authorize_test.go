package kms

import (
	"context"
	"testing"
	"time"

	"github.com/hsmkms/hsmkms/kms/store"
)

// BenchmarkAuthorize is the cost authorization adds to every request: an
// Encrypt under the default key policy by an admin with kms:*.
func BenchmarkAuthorize(b *testing.B) {
	s := New(Config{})
	ids, err := parseIdentities([]Principal{{ARN: "arn:aws:iam::111122223333:user/admin", Account: "111122223333", Policy: AdminPolicy}})
	if err != nil {
		b.Fatal(err)
	}
	s.identities.Store(&ids)
	k := &store.Key{Account: "111122223333", Region: "us-east-1", ID: "1234abcd-12ab-34cd-56ef-1234567890ab",
		KeySpec: specSymmetric, KeyUsage: usageEncrypt, Origin: originAWSKMS, State: "Enabled",
		CreationDate: time.Now(), Policy: defaultPolicy("111122223333")}
	ctx := context.Background()
	op := s.op("Encrypt")
	b.ReportAllocs()
	for b.Loop() {
		r := &Request{op: op, SourceIP: "127.0.0.1", Secure: true,
			Caller: Caller{Account: "111122223333", Region: "us-east-1", PrincipalARN: "arn:aws:iam::111122223333:user/admin"}}
		if err := s.authorizeKey(ctx, r, k, cryptoAccess("", map[string]string{"purpose": "bench"}, "")); err != nil {
			b.Fatal(err)
		}
	}
}
