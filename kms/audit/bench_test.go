package audit

import (
	"context"
	"testing"
)

func BenchmarkMarshalEvent(b *testing.B) {
	ev := event("Encrypt", 1)
	ev.RequestParameters.Add("encryptionContext", map[string]string{"a": "b"})
	ev.Resources = []Resource{{AccountID: "111122223333", Type: "AWS::KMS::Key", ARN: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}}
	ev.AdditionalEventData = Fields{{"keyMaterialId", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendParallel(b *testing.B) {
	tr := openTrail(b, Config{Dir: b.TempDir(), Signer: newSigner(b)})
	ev := event("Encrypt", 1)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tr.Append(context.Background(), ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	tr.Close(context.Background())
}
