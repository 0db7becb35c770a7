package kms_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCrashDuringCreateKey stands in for a process killed between writing
// the metadata row and finishing the key: at start-up Reconcile must remove
// the half-made key and its token object, whichever side got written.
func TestCrashDuringCreateKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	good := e.createKey(e.admin())
	e.close()

	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label})
	require.NoError(t, err)
	require.NoError(t, tok.Login(bg(), e.tok.UserPIN))

	halfMade := func(id string, withObject bool) {
		mat := make([]byte, 32)
		rand.Read(mat)
		uuid := make([]byte, 16)
		rand.Read(uuid)
		tokenID := append(uuid, mat...)
		k := &store.Key{
			Account: account, Region: region, ID: id, KeyUsage: "ENCRYPT_DECRYPT", KeySpec: "SYMMETRIC_DEFAULT",
			Origin: "AWS_KMS", State: "Creating", CreationDate: time.Now(),
			Materials: []store.Material{{ID: hex.EncodeToString(mat), TokenID: tokenID, CreationDate: time.Now()}},
		}
		require.NoError(t, db.CreateKey(bg(), k, nil))
		if withObject {
			_, err := tok.GenerateAESKey(bg(), tokenID, arn(id), hsm.UsageEncrypt|hsm.UsageDecrypt)
			require.NoError(t, err)
		}
	}
	rowOnly, both := "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
	halfMade(rowOnly, false)
	halfMade(both, true)
	require.NoError(t, db.Close())
	require.NoError(t, tok.Close())

	e.start()
	assert.ElementsMatch(t, []string{arn(rowOnly), arn(both)}, e.report.Abandoned)
	rep, err := e.svc.Reconcile(bg())
	require.NoError(t, err)
	assert.Empty(t, rep.Abandoned, "the first start already cleaned up")
	assert.Empty(t, rep.OrphanObjects, "the half-made key's token object was destroyed")
	assert.Empty(t, rep.MissingMaterial)

	c := e.admin()
	for _, id := range []string{rowOnly, both} {
		_, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		requireAPIError(t, err, "NotFoundException", "")
	}
	_, err = c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &good, Plaintext: []byte("x")})
	require.NoError(t, err)
}

// TestReconcileReportsMissingMaterial: metadata whose token object vanished
// is reported, not silently dropped. (Material held wrapped has no token
// object of its own: a missing domain key refuses the start instead, see
// TestMissingDomainKeyRefusesStart.)
func TestReconcileReportsMissingMaterial(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, func(e *env) { e.material.Mode = keystore.TokenObjects })
	id := e.createKey(e.admin())
	e.close()
	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label})
	require.NoError(t, err)
	require.NoError(t, tok.Login(bg(), e.tok.UserPIN))
	objs, err := tok.ListObjects(bg(), pkcs11.CKO_SECRET_KEY)
	require.NoError(t, err)
	require.Len(t, objs, 1)
	require.NoError(t, tok.DestroyObject(bg(), hsm.SecretKeyByID(objs[0].ID)))
	require.NoError(t, tok.Close())
	e.start()
	rep, err := e.svc.Reconcile(bg())
	require.NoError(t, err)
	require.Len(t, rep.MissingMaterial, 1)
	assert.Contains(t, rep.MissingMaterial[0], id)
}
