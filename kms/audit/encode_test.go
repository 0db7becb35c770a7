package audit

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// reference is encoding/json's encoding, HTML escaping off: what the hand
// encoder must write.
func reference(t testing.TB, v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(v))
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func TestMarshalIsEncodingJSON(t *testing.T) {
	full := event("CreateKey", 1)
	full.UserIdentity = UserIdentity{Type: "IAMUser", ARN: "arn:aws:iam::111122223333:user/a<b>&c", AccountID: "111122223333", AccessKeyID: "AKIA", UserName: "a"}
	full.ErrorCode, full.ErrorMessage = "AccessDenied", "User: \"x\"\n\t\u2028 \x01 is not authorized"
	full.RequestParameters = Fields{{"policy", `{"Version":"2012-10-17"}`}, {"tags", []any{Fields{{"tagKey", "k"}, {"tagValue", "v"}}}},
		{"encryptionContext", map[string]string{"b": "2", "a": "1"}}, {"operations", []any{"Encrypt"}}, {"n", int64(7)}, {"flag", false},
		{"bad utf8", "\xff\xfe"}, {"nested", Fields{}}, {"list", []string{"x", "y"}}, {"other", map[string]any{"z": 1.5}}}
	full.ResponseElements = Fields{{"keyMetadata", Fields{{"aWSAccountId", "111122223333"}, {"enabled", true}}}}
	full.AdditionalEventData = Fields{{"keyMaterialId", "ab"}}
	full.Resources = []Resource{{AccountID: "1", Type: "AWS::KMS::Key", ARN: "arn"}, {AccountID: "1", Type: "AWS::KMS::Alias", ARN: "arn2"}}
	full.ServiceEventDetails = Fields{{"keyId", "k"}}
	full.TLSDetails = &TLSDetails{TLSVersion: "TLSv1.3", CipherSuite: "TLS_AES_128_GCM_SHA256", ClientProvidedHostHeader: "h"}
	bare := &Event{EventVersion: EventVersion, EventID: "e", EventType: ServiceEvent}
	for _, ev := range []*Event{event("Encrypt", 2), full, bare} {
		got, err := Marshal(ev)
		require.NoError(t, err)
		require.Equal(t, string(reference(t, ev)), string(got))
		require.True(t, json.Valid(got))
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\x00\x1f\x7f", "<>&", "\u2028\u2029", "\xff", "é漢字🙂"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := appendString(nil, s), reference(t, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, encoding/json says %s", s, got, want)
		}
	})
}
