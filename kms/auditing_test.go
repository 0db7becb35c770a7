package kms_test

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmw "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"
	"github.com/hsmkms/hsmkms/hsm/hsmtest"
	"github.com/hsmkms/hsmkms/kms"
	"github.com/hsmkms/hsmkms/kms/audit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// nobody is a principal no policy names: everything it asks of a key is
// denied.
var nobody = kms.Principal{AccessKeyID: "AKIANOBODY0000000001", Secret: "nobody-secret-000000000000000000000000", Account: account,
	ARN: "arn:aws:iam::" + account + ":user/nobody"}

// newAuditedEnv is an env writing its audit trail to a directory of its
// own.
func newAuditedEnv(t *testing.T, setup func(e *env)) (*env, string) {
	dir := filepath.Join(t.TempDir(), "audit")
	e := newEnvWith(t, func(e *env) {
		e.audit = &kms.AuditConfig{Dir: dir}
		e.principals = append(e.principals, nobody)
		if setup != nil {
			setup(e)
		}
	})
	return e, dir
}

// records are the trail's records, each as a JSON object.
func records(t *testing.T, dir string) []map[string]any {
	t.Helper()
	var out []map[string]any
	require.NoError(t, audit.Records(dir, 0, func(_ uint64, line []byte) error {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			return err
		}
		out = append(out, m)
		return nil
	}))
	return out
}

// record is the trail's record of type typ for the request id.
func record(t *testing.T, dir, requestID, typ string) map[string]any {
	t.Helper()
	for _, r := range records(t, dir) {
		if r["requestID"] == requestID && r["eventType"] == typ {
			return r
		}
	}
	t.Fatalf("no %s record for request %s", typ, requestID)
	return nil
}

func requestIDOf(md middleware.Metadata) string {
	id, _ := awsmw.GetRequestIDMetadata(md)
	return id
}

func requestIDOfError(t *testing.T, err error) string {
	t.Helper()
	var re interface{ ServiceRequestID() string }
	require.True(t, errors.As(err, &re), "%v", err)
	return re.ServiceRequestID()
}

// requireMembers asserts a record holds exactly the named members, as
// CloudTrail's KMS records do for the operation.
func requireMembers(t *testing.T, m map[string]any, names ...string) {
	t.Helper()
	var got []string
	for k := range m {
		got = append(got, k)
	}
	assert.ElementsMatch(t, names, got)
}

var (
	uuidRe      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	eventTimeRe = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
)

// requireCommon checks the members every API call record has, against
// CloudTrail's KMS records (ct-encrypt, ct-decrypt, ...: eventVersion
// 1.11, userIdentity, eventTime, eventSource, awsRegion, sourceIPAddress,
// userAgent, requestID, eventID, eventType, managementEvent,
// recipientAccountId, eventCategory).
func requireCommon(t *testing.T, r map[string]any, p kms.Principal, op, requestID string, readOnly bool) {
	t.Helper()
	assert.Equal(t, "1.11", r["eventVersion"])
	assert.Equal(t, map[string]any{"type": "IAMUser", "arn": p.ARN, "accountId": p.Account, "accessKeyId": p.AccessKeyID,
		"userName": p.ARN[strings.LastIndexByte(p.ARN, '/')+1:]}, r["userIdentity"])
	assert.Regexp(t, eventTimeRe, r["eventTime"])
	assert.Equal(t, "kms.amazonaws.com", r["eventSource"])
	assert.Equal(t, op, r["eventName"])
	assert.Equal(t, region, r["awsRegion"])
	assert.Equal(t, "127.0.0.1", r["sourceIPAddress"])
	assert.Contains(t, r["userAgent"], "aws-sdk-go-v2")
	assert.Equal(t, requestID, r["requestID"], "requestID is the x-amzn-RequestId the client got")
	assert.Regexp(t, uuidRe, r["eventID"])
	assert.Equal(t, readOnly, r["readOnly"])
	assert.Equal(t, "AwsApiCall", r["eventType"])
	assert.Equal(t, true, r["managementEvent"])
	assert.Equal(t, p.Account, r["recipientAccountId"])
	assert.Equal(t, "Management", r["eventCategory"])
	assert.Contains(t, r, "requestParameters")
	assert.Contains(t, r, "responseElements")
}

func keyResources(arns ...string) []any {
	out := []any{}
	for _, a := range arns {
		out = append(out, map[string]any{"accountId": account, "type": "AWS::KMS::Key", "ARN": a})
	}
	return out
}

// TestAuditRecordsAsCloudTrailWritesThem checks records field by field
// against CloudTrail's examples of KMS records: a success, failures the
// operation finds (validation, a denial), failures before it (validation
// by the model, authentication), and the management operations whose
// responseElements CloudTrail keeps.
func TestAuditRecordsAsCloudTrailWritesThem(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, nil)
	c := e.admin()
	admin := principals[0]
	created, err := c.CreateKey(bg(), &awskms.CreateKeyInput{Description: aws.String("audited")})
	require.NoError(t, err)
	keyID, keyARN := *created.KeyMetadata.KeyId, *created.KeyMetadata.Arn
	ec := map[string]string{"Department": "Engineering"}

	t.Run("CreateKey", func(t *testing.T) {
		r := record(t, dir, requestIDOf(created.ResultMetadata), "AwsApiCall")
		requireCommon(t, r, admin, "CreateKey", requestIDOf(created.ResultMetadata), false)
		assert.Equal(t, map[string]any{"description": "audited", "keyUsage": "ENCRYPT_DECRYPT", "keySpec": "SYMMETRIC_DEFAULT",
			"origin": "AWS_KMS", "bypassPolicyLockoutSafetyCheck": false}, r["requestParameters"])
		md := r["responseElements"].(map[string]any)["keyMetadata"].(map[string]any)
		assert.Equal(t, account, md["aWSAccountId"], "CloudTrail's own spelling")
		assert.Equal(t, keyID, md["keyId"])
		assert.Equal(t, keyARN, md["arn"])
		assert.Equal(t, "Enabled", md["keyState"])
		assert.Equal(t, true, md["enabled"])
		assert.Regexp(t, `^[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d\d:\d\d [AP]M$`, md["creationDate"], "as CloudTrail writes dates in responseElements")
		assert.Equal(t, keyResources(keyARN), r["resources"])
		intent := record(t, dir, requestIDOf(created.ResultMetadata), "HsmkmsApiCallIntent")
		assert.Equal(t, "CreateKey", intent["eventName"], "a call that changes something is recorded before it runs")
		assert.Nil(t, intent["responseElements"])
	})

	t.Run("Encrypt succeeds", func(t *testing.T) {
		out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyARN, Plaintext: []byte("x"), EncryptionContext: ec})
		require.NoError(t, err)
		id := requestIDOf(out.ResultMetadata)
		r := record(t, dir, id, "AwsApiCall")
		requireCommon(t, r, admin, "Encrypt", id, true)
		// ct-encrypt: requestParameters {encryptionContext, keyId,
		// encryptionAlgorithm}, responseElements null,
		// additionalEventData {keyMaterialId}, resources [the key].
		assert.Equal(t, map[string]any{"encryptionContext": map[string]any{"Department": "Engineering"}, "keyId": keyARN,
			"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}, r["requestParameters"])
		assert.Nil(t, r["responseElements"])
		extra := r["additionalEventData"].(map[string]any)
		assert.Regexp(t, `^[0-9a-f]{64}$`, extra["keyMaterialId"])
		assert.Equal(t, keyResources(keyARN), r["resources"])
		requireMembers(t, r, "eventVersion", "userIdentity", "eventTime", "eventSource", "eventName", "awsRegion",
			"sourceIPAddress", "userAgent", "requestParameters", "responseElements", "additionalEventData", "requestID",
			"eventID", "readOnly", "resources", "eventType", "managementEvent", "recipientAccountId", "eventCategory", "hsmkms")

		// ct-decrypt: the key ARN and the algorithm, though the request
		// named neither.
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: ec})
		require.NoError(t, err)
		r = record(t, dir, requestIDOf(dec.ResultMetadata), "AwsApiCall")
		assert.Equal(t, map[string]any{"encryptionContext": map[string]any{"Department": "Engineering"}, "keyId": keyARN,
			"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}, r["requestParameters"])
		assert.Nil(t, r["responseElements"])
	})

	t.Run("a failure the operation finds", func(t *testing.T) {
		_, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &keyID})
		requireAPIError(t, err, "ValidationException", "Please specify either number of bytes or key spec.")
		id := requestIDOfError(t, err)
		r := record(t, dir, id, "AwsApiCall")
		requireCommon(t, r, admin, "GenerateDataKey", id, true)
		// ct-decrypt's failure: errorCode and errorMessage as answered.
		assert.Equal(t, "ValidationException", r["errorCode"])
		assert.Equal(t, "Please specify either number of bytes or key spec.", r["errorMessage"])
		assert.Equal(t, map[string]any{"keyId": keyID}, r["requestParameters"])
		assert.Nil(t, r["responseElements"])
	})

	t.Run("a validation failure before the operation", func(t *testing.T) {
		_, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: aws.String(strings.Repeat("k", 2049)), Plaintext: []byte("x")})
		require.Error(t, err)
		id := requestIDOfError(t, err)
		r := record(t, dir, id, "AwsApiCall")
		requireCommon(t, r, admin, "Encrypt", id, true)
		assert.Equal(t, "ValidationException", r["errorCode"])
		assert.Contains(t, r["errorMessage"], "1 validation error detected")
		assert.Nil(t, r["requestParameters"], "a body that is not a valid request is not logged")
	})

	t.Run("a denial", func(t *testing.T) {
		_, err := e.client(nobody, region).Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyARN, Plaintext: []byte("x")})
		requireAPIError(t, err, "AccessDeniedException", "")
		id := requestIDOfError(t, err)
		r := record(t, dir, id, "AwsApiCall")
		requireCommon(t, r, nobody, "Encrypt", id, true)
		// CloudTrail records KMS's denials as "AccessDenied", with the
		// message the caller got.
		assert.Equal(t, "AccessDenied", r["errorCode"])
		assert.Equal(t, "User: "+nobody.ARN+" is not authorized to perform: kms:Encrypt on resource: "+keyARN+
			" because no identity-based policy allows the kms:Encrypt action", r["errorMessage"])
		assert.Equal(t, keyResources(keyARN), r["resources"])
	})

	t.Run("authentication failures", func(t *testing.T) {
		bad := admin
		bad.Secret = "wrong-secret"
		_, err := e.client(bad, region).ListKeys(bg(), &awskms.ListKeysInput{})
		requireAPIError(t, err, "InvalidSignatureException", "")
		id := requestIDOfError(t, err)
		r := record(t, dir, id, "AwsApiCall")
		requireCommon(t, r, admin, "ListKeys", id, true)
		assert.Equal(t, "InvalidSignatureException", r["errorCode"])
		assert.Nil(t, r["requestParameters"])

		unknown := admin
		unknown.AccessKeyID = "AKIAUNKNOWN000000000"
		_, err = e.client(unknown, region).ListKeys(bg(), &awskms.ListKeysInput{})
		requireAPIError(t, err, "UnrecognizedClientException", "")
		r = record(t, dir, requestIDOfError(t, err), "AwsApiCall")
		assert.Equal(t, map[string]any{"type": "Unknown", "accessKeyId": "AKIAUNKNOWN000000000"}, r["userIdentity"],
			"the access key the request claimed, and nothing more")
		assert.Equal(t, "UnrecognizedClientException", r["errorCode"])
		assert.Equal(t, region, r["awsRegion"])
		assert.NotContains(t, r, "recipientAccountId")
	})

	t.Run("management operations keep their responseElements", func(t *testing.T) {
		g, err := c.CreateGrant(bg(), &awskms.CreateGrantInput{KeyId: &keyID, GranteePrincipal: aws.String(nobody.ARN),
			Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
		require.NoError(t, err)
		r := record(t, dir, requestIDOf(g.ResultMetadata), "AwsApiCall")
		assert.Equal(t, map[string]any{"grantId": *g.GrantId}, r["responseElements"], "ct-creategrant: the id, never the token")
		assert.Equal(t, map[string]any{"keyId": keyID, "granteePrincipal": nobody.ARN, "operations": []any{"Encrypt"}}, r["requestParameters"])

		a, err := c.CreateAlias(bg(), &awskms.CreateAliasInput{AliasName: aws.String("alias/audited"), TargetKeyId: &keyID})
		require.NoError(t, err)
		r = record(t, dir, requestIDOf(a.ResultMetadata), "AwsApiCall")
		assert.Equal(t, map[string]any{"aliasName": "alias/audited", "targetKeyId": keyID}, r["requestParameters"])
		assert.Nil(t, r["responseElements"])
		assert.Equal(t, append(keyResources(keyARN), map[string]any{"accountId": account, "type": "AWS::KMS::Alias",
			"ARN": "arn:aws:kms:" + region + ":" + account + ":alias/audited"}), r["resources"], "ct-createalias: the key and the alias")

		dst := e.createKey(c)
		blob, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &keyID, Plaintext: []byte("x")})
		require.NoError(t, err)
		re, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: blob.CiphertextBlob, DestinationKeyId: &dst})
		require.NoError(t, err)
		r = record(t, dir, requestIDOf(re.ResultMetadata), "AwsApiCall")
		assert.Equal(t, keyResources(keyARN, *re.KeyId), r["resources"], "ct-reencrypt: the source, then the destination")
		assert.Equal(t, map[string]any{"destinationKeyId": dst, "sourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
			"destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}, r["requestParameters"])

		sd, err := c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &dst, PendingWindowInDays: aws.Int32(7)})
		require.NoError(t, err)
		r = record(t, dir, requestIDOf(sd.ResultMetadata), "AwsApiCall")
		assert.Equal(t, map[string]any{"keyId": dst, "pendingWindowInDays": float64(7)}, r["requestParameters"])
		resp := r["responseElements"].(map[string]any)
		assert.Equal(t, *sd.KeyId, resp["keyId"])
		assert.Equal(t, "PendingDeletion", resp["keyState"])
		assert.Equal(t, sd.DeletionDate.UTC().Format("Jan 2, 2006 3:04:05 PM"), resp["deletionDate"])
	})

	e.close()
	sum, err := audit.Verify(dir, audit.VerifyOptions{PublicKeys: pinnedKey(t, dir)})
	require.NoError(t, err)
	assert.EqualValues(t, 0, sum.Unsealed)
}

// pinnedKey reads the exported public key as a pinned key.
func pinnedKey(t *testing.T, dir string) map[string]*ecdsa.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, audit.PublicKeyPEM))
	require.NoError(t, err)
	k, fp, err := audit.PublicKeyFromPEM(b)
	require.NoError(t, err)
	return map[string]*ecdsa.PublicKey{fp: k}
}

// TestTheTrailHoldsNoSecret is the grep test: a distinctive plaintext, a
// data key, a message, a MAC, a signature, a ciphertext and a key store
// password never appear in the trail, as they are or encoded.
func TestTheTrailHoldsNoSecret(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, func(e *env) {
		e.addClusterFor(t, "cluster-auditsecretaa")
	})
	c := e.admin()
	key := e.createKey(c)
	plaintext := []byte("hsmkms-canary-plaintext-6f1d0c2a")
	secrets := map[string][]byte{"plaintext": plaintext}

	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: plaintext})
	require.NoError(t, err)
	secrets["ciphertext"] = enc.CiphertextBlob
	_, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	dk, err := c.GenerateDataKey(bg(), &awskms.GenerateDataKeyInput{KeyId: &key, KeySpec: types.DataKeySpecAes256})
	require.NoError(t, err)
	secrets["data key"] = dk.Plaintext
	secrets["data key ciphertext"] = dk.CiphertextBlob
	rnd, err := c.GenerateRandom(bg(), &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(32)})
	require.NoError(t, err)
	secrets["random bytes"] = rnd.Plaintext

	mk, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	require.NoError(t, err)
	message := []byte("hsmkms-canary-message-93b1e7")
	mac, err := c.GenerateMac(bg(), &awskms.GenerateMacInput{KeyId: mk.KeyMetadata.KeyId, Message: message, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	require.NoError(t, err)
	secrets["message"], secrets["MAC"] = message, mac.Mac
	sk, err := c.CreateKey(bg(), &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	require.NoError(t, err)
	sig, err := c.Sign(bg(), &awskms.SignInput{KeyId: sk.KeyMetadata.KeyId, Message: message, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	require.NoError(t, err)
	secrets["signature"] = sig.Signature

	cluster := "cluster-auditsecretaa"
	password := e.clusterToken[cluster].UserPIN
	secrets["kmsuser password"] = []byte(password)
	ks := e.createStore(c, "audited-store", cluster, password)
	newPassword := "canary-password-5e2b"
	secrets["new kmsuser password"] = []byte(newPassword)
	_, err = c.UpdateCustomKeyStore(bg(), &awskms.UpdateCustomKeyStoreInput{CustomKeyStoreId: &ks, KeyStorePassword: &newPassword})
	require.NoError(t, err)
	_, err = e.client(nobody, region).CreateCustomKeyStore(bg(), &awskms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("denied"),
		CloudHsmClusterId: aws.String(cluster), TrustAnchorCertificate: aws.String(trustAnchor(t)), KeyStorePassword: aws.String("canary-denied-pw")})
	requireAPIError(t, err, "AccessDeniedException", "")
	secrets["denied password"] = []byte("canary-denied-pw")
	secrets["admin secret"] = []byte(principals[0].Secret)
	e.close()

	var trail []byte
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		require.NoError(t, err)
		trail = append(trail, b...)
	}
	require.Contains(t, string(trail), "UpdateCustomKeyStore", "the calls are in the trail")
	for what, s := range secrets {
		for form, enc := range map[string]string{"raw": string(s), "base64": base64.StdEncoding.EncodeToString(s), "hex": hex.EncodeToString(s)} {
			assert.False(t, bytes.Contains(trail, []byte(enc)), "the %s (%s) is in the trail", what, form)
		}
	}
}

// addClusterFor declares a fresh token as cluster id.
func (e *env) addClusterFor(t *testing.T, id string) {
	e.addCluster(id, hsmtest.NewToken(t), nil)
}

// TestACallTheTrailCannotRecordIsNotPerformed: once the trail cannot be
// written, every one of the 54 operations is answered KMSInternalException,
// whatever its input, and nothing changes.
func TestACallTheTrailCannotRecordIsNotPerformed(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, nil)
	c := e.admin()
	key := e.createKey(c)
	before, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
	require.NoError(t, err)

	e.svc.FailAuditTrail(errors.New("disk gone"))
	for _, op := range kmsOperations(t) {
		t.Run(op, func(t *testing.T) {
			for _, body := range []string{`{}`, `{"KeyId":"` + key + `","Description":"changed","AliasName":"alias/x","TargetKeyId":"` + key + `"}`} {
				status, typ, _ := e.raw(op, body)
				assert.Equal(t, 500, status)
				assert.Equal(t, "KMSInternalException", typ)
			}
		})
	}
	_, err = c.CreateKey(bg(), &awskms.CreateKeyInput{})
	requireAPIError(t, err, "KMSInternalException", "")
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &key})
	requireAPIError(t, err, "KMSInternalException", "")

	e.closeMayFail = true // the trail's failure is reported by Close
	e.restart()
	c = e.admin()
	after, err := c.ListKeys(bg(), &awskms.ListKeysInput{})
	require.NoError(t, err)
	assert.Equal(t, len(before.Keys), len(after.Keys), "no key was created")
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &key})
	require.NoError(t, err)
	assert.Equal(t, types.KeyStateEnabled, d.KeyMetadata.KeyState, "no deletion was scheduled")
	assert.Equal(t, "", aws.ToString(d.KeyMetadata.Description), "no description changed")
	_, err = c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: aws.String("alias/x")})
	requireAPIError(t, err, "NotFoundException", "")
	e.close()
	_, err = audit.Verify(dir, audit.VerifyOptions{})
	require.NoError(t, err, "the failed run's file is sealed at the next start")
}

// kmsOperations are the 54 operations of the model.
func kmsOperations(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("wire/model.json")
	require.NoError(t, err)
	var m struct{ Operations map[string]string }
	require.NoError(t, json.Unmarshal(b, &m))
	var out []string
	for op := range m.Operations {
		out = append(out, op)
	}
	require.Len(t, out, 54)
	return out
}

// TestTrailAcrossRestartsAndInternalActions: the chain goes on across a
// restart; a key's deletion by the reaper and an automatic rotation are
// AwsServiceEvent records as CloudTrail writes them (ct-delete-key,
// ct-rotatekey).
func TestTrailAcrossRestartsAndInternalActions(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, nil)
	c := e.admin()
	doomed := e.createKey(c)
	_, err := c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &doomed, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	rotated := e.createKey(c)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &rotated, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	e.restart()
	e.clock.Advance(91 * 24 * time.Hour)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = e.svc.RotateDue(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	e.close()

	var del, rot map[string]any
	starts := 0
	for _, r := range records(t, dir) {
		switch {
		case r["eventName"] == "DeleteKey" && r["eventType"] == "AwsServiceEvent":
			del = r
		case r["eventName"] == "RotateKey" && r["eventType"] == "AwsServiceEvent":
			rot = r
		case r["eventName"] == "StartAuditTrail":
			starts++
		}
	}
	require.NotNil(t, del)
	require.NotNil(t, rot)
	assert.Equal(t, 2, starts)
	doomedARN := "arn:aws:kms:" + region + ":" + account + ":key/" + doomed
	assert.Equal(t, map[string]any{"accountId": account, "invokedBy": "AWS Internal"}, del["userIdentity"])
	assert.Equal(t, "AWS Internal", del["sourceIPAddress"])
	assert.Equal(t, "AWS Internal", del["userAgent"])
	assert.Nil(t, del["requestParameters"])
	assert.Equal(t, map[string]any{"keyId": doomedARN}, del["responseElements"], "ct-delete-key: the key ARN in responseElements.keyId")
	assert.Equal(t, false, del["readOnly"])
	assert.Equal(t, keyResources(doomedARN), del["resources"])
	assert.Equal(t, account, del["recipientAccountId"])
	assert.NotContains(t, del, "requestID", "nobody asked")
	assert.Equal(t, rotated, rot["serviceEventDetails"].(map[string]any)["keyId"], "ct-rotatekey: serviceEventDetails.keyId")

	sum, err := audit.Verify(dir, audit.VerifyOptions{PublicKeys: pinnedKey(t, dir)})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, sum.Digests, 2, "each clean stop seals")
}

func TestEncryptionContextCanBeLeftOut(t *testing.T) {
	t.Parallel()
	e, dir := newAuditedEnv(t, func(e *env) { e.audit.OmitEncryptionContext = true })
	c := e.admin()
	key := e.createKey(c)
	out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &key, Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "canary-tenant-41"}})
	require.NoError(t, err)
	r := record(t, dir, requestIDOf(out.ResultMetadata), "AwsApiCall")
	assert.Equal(t, map[string]any{"keyId": key, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}, r["requestParameters"])
	e.close()
	b, err := json.Marshal(records(t, dir))
	require.NoError(t, err)
	assert.NotContains(t, string(b), "canary-tenant-41")
}
