package kms_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDomainKeyActionsInTheTrail: a domain key rotation, the rewrap of the
// material under the retired key and its destruction are internal actions
// in the audit trail (AwsServiceEvent from hsmkms.keystore), each after an
// intent; with a trail that cannot be written, a rotation is not
// performed.
func TestDomainKeyActionsInTheTrail(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "audit")
	e := wrappedEnv(t, func(e *env) { e.audit = &kms.AuditConfig{Dir: dir} })
	k := makeKey(t, e.admin(), types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt)
	before, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, before, 1)
	next, err := e.svc.RotateDomainKey(bg(), "")
	require.NoError(t, err)
	pass, err := e.svc.RewrapDomainKeys(bg())
	require.NoError(t, err)
	require.Equal(t, 1, pass.Rewrapped)
	checkKey(t, e.admin(), k)

	events := map[string]map[string]any{}
	intents := map[string]int{}
	for _, r := range records(t, dir) {
		if r["eventSource"] != kms.HierarchySource {
			continue
		}
		switch r["eventType"] {
		case "AwsServiceEvent":
			events[r["eventName"].(string)] = r
		case "HsmkmsApiCallIntent":
			intents[r["eventName"].(string)]++
		}
	}
	assert.Equal(t, map[string]int{"RotateDomainKey": 1, "RewrapKeyMaterial": 1, "DestroyDomainKey": 1}, intents)
	require.Contains(t, events, "RotateDomainKey")
	assert.Equal(t, map[string]any{"keyStoreId": "default", "reason": "requested", "previousDomainKeyId": before[0].ID, "domainKeyId": next},
		events["RotateDomainKey"]["serviceEventDetails"])
	assert.Equal(t, map[string]any{"invokedBy": "AWS Internal"}, events["RotateDomainKey"]["userIdentity"])
	require.Contains(t, events, "RewrapKeyMaterial")
	assert.Equal(t, map[string]any{"keyStoreId": "default", "retiredDomainKeyIds": []any{before[0].ID}, "domainKeyId": next,
		"materialVersionsRewrapped": float64(1)}, events["RewrapKeyMaterial"]["serviceEventDetails"])
	require.Contains(t, events, "DestroyDomainKey")
	assert.Equal(t, map[string]any{"keyStoreId": "default", "domainKeyId": before[0].ID, "destroyed": true},
		events["DestroyDomainKey"]["serviceEventDetails"])

	e.closeMayFail = true
	e.svc.FailAuditTrail(errors.New("disk gone"))
	_, err = e.svc.RotateDomainKey(bg(), "")
	require.Error(t, err, "a rotation the trail cannot record is not performed")
	after, err := e.svc.DomainKeys(bg())
	require.NoError(t, err)
	require.Len(t, after, 1)
	assert.Equal(t, next, after[0].ID, "no new domain key")
	e.close()
	_, err = audit.Verify(dir, audit.VerifyOptions{})
	assert.NoError(t, err)
}
