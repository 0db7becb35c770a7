package kms_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hsmkms/hsmkms/hsm"
	"github.com/hsmkms/hsmkms/keystore"
	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const day = 24 * time.Hour

func (e *env) rotationStatus(c *awskms.Client, id string) *awskms.GetKeyRotationStatusOutput {
	e.t.Helper()
	st, err := c.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
	require.NoError(e.t, err)
	return st
}

func (e *env) currentMaterial(c *awskms.Client, id string) string {
	e.t.Helper()
	d, err := c.DescribeKey(bg(), &awskms.DescribeKeyInput{KeyId: &id})
	require.NoError(e.t, err)
	return *d.KeyMetadata.CurrentKeyMaterialId
}

func (e *env) rotations(c *awskms.Client, id string, all bool) []types.RotationsListEntry {
	e.t.Helper()
	in := &awskms.ListKeyRotationsInput{KeyId: &id}
	if all {
		in.IncludeKeyMaterial = types.IncludeKeyMaterialAllKeyMaterial
	}
	var out []types.RotationsListEntry
	p := awskms.NewListKeyRotationsPaginator(c, in)
	for p.HasMorePages() {
		page, err := p.NextPage(bg())
		require.NoError(e.t, err)
		out = append(out, page.Rotations...)
	}
	return out
}

func (e *env) rotateDue() int {
	e.t.Helper()
	n, err := e.svc.RotateDue(bg())
	require.NoError(e.t, err)
	return n
}

// sealedUnder reports whether blob names material (hex): the ciphertext
// header carries the 32-byte material id in clear.
func sealedUnder(t *testing.T, blob []byte, material string) bool {
	t.Helper()
	m, err := hex.DecodeString(material)
	require.NoError(t, err)
	require.Len(t, m, 32)
	return bytes.Contains(blob, m)
}

// keyVersions counts the material versions the default key store holds
// for key id: its token objects (one per version of a symmetric key), and
// the versions recorded wrapped, which must then have no token object at
// all.
func (e *env) keyVersions(id string) int {
	e.t.Helper()
	objects := e.keyObjects(id)
	if e.material.Mode != keystore.Wrapped {
		return objects
	}
	require.Zero(e.t, objects, "a key of a wrapped key store has no token object")
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(e.t, err)
	defer db.Close()
	k, err := db.GetKey(bg(), account, region, id)
	if errors.Is(err, store.ErrNotFound) {
		return 0
	}
	require.NoError(e.t, err)
	n := 0
	for _, m := range k.Materials {
		if len(m.Wrapped) > 0 {
			n++
		}
	}
	return n
}

// keyObjects counts the token objects whose CKA_ID starts with key id's
// uuid. It opens the token beside the running service, which shares its
// login (one C_Initialize per process).
func (e *env) keyObjects(id string) int {
	e.t.Helper()
	uuid, err := hex.DecodeString(string(bytes.ReplaceAll([]byte(id), []byte("-"), nil)))
	require.NoError(e.t, err)
	h, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label, PoolSize: 1})
	require.NoError(e.t, err)
	defer h.Close()
	objs, err := h.ListObjects(bg(), 0)
	require.NoError(e.t, err)
	n := 0
	for _, o := range objs {
		if bytes.HasPrefix(o.ID, uuid) {
			n++
		}
	}
	return n
}

func TestKeyRotationStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	enabledAt := e.clock.Now()

	st := e.rotationStatus(c, id)
	assert.False(t, st.KeyRotationEnabled)
	assert.Nil(t, st.NextRotationDate)
	assert.Nil(t, st.RotationPeriodInDays)
	assert.Equal(t, arn(id), *st.KeyId)

	_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
	require.NoError(t, err)
	st = e.rotationStatus(c, id)
	assert.True(t, st.KeyRotationEnabled)
	assert.Equal(t, int32(365), *st.RotationPeriodInDays, "AWS's default period")
	assert.WithinDuration(t, enabledAt.Add(365*day), *st.NextRotationDate, time.Second)
	assert.Nil(t, st.OnDemandRotationStartDate)

	// A new period on an enabled key counts from the same start.
	e.clock.Advance(10 * day)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	st = e.rotationStatus(c, id)
	assert.Equal(t, int32(90), *st.RotationPeriodInDays)
	assert.WithinDuration(t, enabledAt.Add(90*day), *st.NextRotationDate, time.Second)

	for _, tc := range []struct {
		days int32
		msg  string
	}{
		{89, "1 validation error detected: Value '89' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value greater than or equal to 90"},
		{2561, "1 validation error detected: Value '2561' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value less than or equal to 2560"},
	} {
		_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(tc.days)})
		requireAPIError(t, err, "ValidationException", tc.msg)
	}
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(2560)})
	require.NoError(t, err, "the bounds are inclusive")

	_, err = c.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
	require.NoError(t, err)
	st = e.rotationStatus(c, id)
	assert.False(t, st.KeyRotationEnabled)
	assert.Nil(t, st.NextRotationDate)

	// Re-enabled, the schedule starts again from now.
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(100)})
	require.NoError(t, err)
	assert.WithinDuration(t, e.clock.Now().Add(100*day), *e.rotationStatus(c, id).NextRotationDate, time.Second)

	// Disabled key: status kept and readable, changes refused.
	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	assert.True(t, e.rotationStatus(c, id).KeyRotationEnabled)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
	requireAPIError(t, err, "DisabledException", arn(id)+" is disabled.")
	_, err = c.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
	requireAPIError(t, err, "DisabledException", arn(id)+" is disabled.")

	// Pending deletion: reported false; the stored status returns on cancel.
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	st = e.rotationStatus(c, id)
	assert.False(t, st.KeyRotationEnabled)
	assert.Nil(t, st.NextRotationDate)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
	requireAPIError(t, err, "KMSInvalidStateException", arn(id)+" is pending deletion.")
	_, err = c.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	st = e.rotationStatus(c, id)
	assert.True(t, st.KeyRotationEnabled)
	assert.Equal(t, int32(100), *st.RotationPeriodInDays)
}

func TestAutomaticRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	other := e.createKey(c) // rotation off: never rotated
	original := e.currentMaterial(c, id)

	type sealed struct {
		blob     []byte
		material string
		text     string
	}
	var blobs []sealed
	encrypt := func(text string) {
		out, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte(text)})
		require.NoError(t, err)
		cur := e.currentMaterial(c, id)
		require.True(t, sealedUnder(t, out.CiphertextBlob, cur), "Encrypt uses the newest material")
		blobs = append(blobs, sealed{out.CiphertextBlob, cur, text})
	}
	encrypt("version 0")

	_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	assert.Equal(t, 0, e.rotateDue(), "not due yet")
	e.clock.Advance(90*day - time.Second)
	assert.Equal(t, 0, e.rotateDue(), "a second early")
	e.clock.Advance(time.Second)
	assert.Equal(t, 1, e.rotateDue())
	assert.Equal(t, 0, e.rotateDue(), "rotated once per due date")
	first := e.clock.Now()
	v1 := e.currentMaterial(c, id)
	assert.NotEqual(t, original, v1)
	assert.WithinDuration(t, first.Add(90*day), *e.rotationStatus(c, id).NextRotationDate, time.Second)
	encrypt("version 1")

	// The schedule is in the store: a restart between rotations keeps it.
	e.restart()
	c = e.admin()
	assert.Empty(t, e.report.AbandonedRotations)
	assert.Empty(t, e.report.OrphanObjects)
	e.clock.Advance(89 * day)
	assert.Equal(t, 0, e.rotateDue())
	e.clock.Advance(day)
	assert.Equal(t, 1, e.rotateDue())
	encrypt("version 2")

	// Disabled keys are not rotated; re-enabled past due, they rotate at once.
	_, err = c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &id})
	require.NoError(t, err)
	e.clock.Advance(200 * day)
	assert.Equal(t, 0, e.rotateDue())
	_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)
	assert.Equal(t, 1, e.rotateDue())
	assert.WithinDuration(t, e.clock.Now().Add(90*day), *e.rotationStatus(c, id).NextRotationDate, time.Second)
	encrypt("version 3")

	// Pending deletion: not rotated either. The rotation falls due (91
	// days) inside the waiting period, so the deletion can still be
	// cancelled.
	e.clock.Advance(62 * day)
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(30)})
	require.NoError(t, err)
	e.clock.Advance(29 * day)
	assert.Equal(t, 0, e.rotateDue())
	_, err = c.CancelKeyDeletion(bg(), &awskms.CancelKeyDeletionInput{KeyId: &id})
	require.NoError(t, err)
	_, err = c.EnableKey(bg(), &awskms.EnableKeyInput{KeyId: &id})
	require.NoError(t, err)

	rots := e.rotations(c, id, false)
	require.Len(t, rots, 3)
	for i, r := range rots {
		assert.Equal(t, types.RotationTypeAutomatic, r.RotationType)
		assert.Equal(t, id, *r.KeyId)
		assert.Equal(t, blobs[i+1].material, *r.KeyMaterialId)
		assert.NotNil(t, r.RotationDate)
	}
	assert.Equal(t, types.KeyMaterialStateCurrent, rots[2].KeyMaterialState)
	assert.Equal(t, types.KeyMaterialStateNonCurrent, rots[0].KeyMaterialState)
	assert.WithinDuration(t, first, *rots[0].RotationDate, time.Second)
	assert.Equal(t, e.currentMaterial(c, id), *rots[2].KeyMaterialId, "DescribeKey follows the newest material")

	// Every version still decrypts; ReEncrypt lands on the newest.
	newest := e.currentMaterial(c, id)
	for _, b := range blobs {
		dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: b.blob})
		require.NoError(t, err, b.text)
		assert.Equal(t, b.text, string(dec.Plaintext))
		re, err := c.ReEncrypt(bg(), &awskms.ReEncryptInput{CiphertextBlob: b.blob, DestinationKeyId: &id})
		require.NoError(t, err, b.text)
		assert.True(t, sealedUnder(t, re.CiphertextBlob, newest), b.text)
		dec, err = c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: re.CiphertextBlob})
		require.NoError(t, err)
		assert.Equal(t, b.text, string(dec.Plaintext))
	}
	assert.Empty(t, e.rotations(c, other, false), "a key without rotation keeps its material")
	assert.Equal(t, 4, e.keyVersions(id), "one token object per version")
}

func TestRotateKeyOnDemand(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	first, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("before")})
	require.NoError(t, err)
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
	require.NoError(t, err)
	next := *e.rotationStatus(c, id).NextRotationDate

	for i := range 25 {
		out, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		require.NoError(t, err, "rotation %d", i+1)
		assert.Equal(t, arn(id), *out.KeyId)
	}
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String(arn(id))})
	requireAPIError(t, err, "LimitExceededException",
		"The on-demand rotations limit has been reached for the given keyId. No more on-demand rotations can be performed for this key: "+arn(id))
	assert.Equal(t, next, *e.rotationStatus(c, id).NextRotationDate, "on-demand rotations leave the schedule alone")

	// The quota is for on-demand rotations only: automatic ones continue.
	e.clock.Advance(365 * day)
	assert.Equal(t, 1, e.rotateDue())

	rots := e.rotations(c, id, false)
	require.Len(t, rots, 26)
	for _, r := range rots[:25] {
		assert.Equal(t, types.RotationTypeOnDemand, r.RotationType)
		assert.Equal(t, types.KeyMaterialStateNonCurrent, r.KeyMaterialState)
	}
	assert.Equal(t, types.RotationTypeAutomatic, rots[25].RotationType)
	assert.Equal(t, types.KeyMaterialStateCurrent, rots[25].KeyMaterialState)
	all := e.rotations(c, id, true)
	require.Len(t, all, 27)
	assert.Nil(t, all[0].RotationDate, "the original material has no rotation date")
	assert.Empty(t, all[0].RotationType)
	assert.True(t, sealedUnder(t, first.CiphertextBlob, *all[0].KeyMaterialId))

	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: first.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "before", string(dec.Plaintext))
	assert.Equal(t, 27, e.keyVersions(id))

	// On-demand rotation does not need automatic rotation.
	plain := e.createKey(c)
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &plain})
	require.NoError(t, err)
	assert.False(t, e.rotationStatus(c, plain).KeyRotationEnabled)
	assert.Len(t, e.rotations(c, plain, false), 1)
}

func TestListKeyRotationsPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	for range 7 {
		_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		require.NoError(t, err)
	}
	want := e.rotations(c, id, false)
	require.Len(t, want, 7)

	var got []types.RotationsListEntry
	var marker *string
	pages := 0
	for {
		out, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(3), Marker: marker})
		require.NoError(t, err)
		pages++
		got = append(got, out.Rotations...)
		if !out.Truncated {
			assert.Nil(t, out.NextMarker)
			break
		}
		require.Len(t, out.Rotations, 3)
		marker = out.NextMarker
	}
	assert.Equal(t, 3, pages)
	assert.Equal(t, want, got)

	out, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(7)})
	require.NoError(t, err)
	assert.False(t, out.Truncated, "a page exactly as long as the list is the last")

	other := e.createKey(c)
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &other})
	require.NoError(t, err)
	page, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &other, Limit: aws.Int32(1), IncludeKeyMaterial: types.IncludeKeyMaterialAllKeyMaterial})
	require.NoError(t, err)
	require.True(t, page.Truncated)

	for _, bad := range []string{"garbage", "r1.", "r1.00", *page.NextMarker} {
		_, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id, Marker: aws.String(bad)})
		requireAPIError(t, err, "InvalidMarkerException", "Invalid marker")
	}
	_, err = c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id, Limit: aws.Int32(1001)})
	requireAPIError(t, err, "ValidationException", "")

	fresh := e.createKey(c)
	out, err = c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &fresh})
	require.NoError(t, err)
	assert.Empty(t, out.Rotations)
	assert.False(t, out.Truncated)
}

// TestRotationConflict holds a rotation between making its token object and
// recording it, through the test hook, so the overlap is certain.
func TestRotationConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	entered, release := make(chan struct{}), make(chan struct{})
	e.svc.SetRotationHook(func(keyARN string) error {
		if keyARN == arn(id) {
			close(entered)
			<-release
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		done <- err
	}()
	<-entered
	st := e.rotationStatus(c, id)
	require.NotNil(t, st.OnDemandRotationStartDate, "visible while in progress")
	assert.WithinDuration(t, e.clock.Now(), *st.OnDemandRotationStartDate, time.Second)
	_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "ConflictException", "")
	other := e.createKey(c)
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &other})
	require.NoError(t, err, "the mark is per key")
	close(release)
	require.NoError(t, <-done)
	assert.Nil(t, e.rotationStatus(c, id).OnDemandRotationStartDate, "gone once complete")
	assert.Len(t, e.rotations(c, id, false), 1)
	e.svc.SetRotationHook(nil)

	// An automatic rotation due within 20 minutes also conflicts, as AWS.
	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	e.clock.Advance(90*day - 20*time.Minute)
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err, "20 minutes before is outside the window")
	e.clock.Advance(time.Second)
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "ConflictException", "An automatic rotation of this key is currently in progress or scheduled to begin within the next 20 minutes.")
}

// TestRotationWriteFailureDestroysObject: a rotation whose metadata write
// fails leaves no token object behind and no material in the metadata.
func TestRotationWriteFailureDestroysObject(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	before := e.currentMaterial(c, id)
	e.svc.SetRotationHook(func(string) error { return errors.New("injected metadata write failure") })
	_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	requireAPIError(t, err, "KMSInternalException", "")
	assert.Equal(t, 1, e.keyVersions(id))
	assert.Equal(t, before, e.currentMaterial(c, id))
	assert.Empty(t, e.rotations(c, id, false))

	_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	e.clock.Advance(90 * day)
	n, err := e.svc.RotateDue(bg())
	require.Error(t, err)
	assert.Equal(t, 0, n)
	assert.Equal(t, 1, e.keyVersions(id))

	e.svc.SetRotationHook(nil)
	assert.Equal(t, 1, e.rotateDue(), "still due, and rotated on the next pass")
	assert.Equal(t, 2, e.keyVersions(id))
}

func TestRotationStateAndKeyTypeErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	disabled, pending := e.createKey(c), e.createKey(c)
	_, err := c.DisableKey(bg(), &awskms.DisableKeyInput{KeyId: &disabled})
	require.NoError(t, err)
	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &pending})
	require.NoError(t, err)

	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &disabled})
	requireAPIError(t, err, "DisabledException", arn(disabled)+" is disabled.")
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &pending})
	requireAPIError(t, err, "KMSInvalidStateException", arn(pending)+" is pending deletion.")
	for _, id := range []string{disabled, pending} {
		out, err := c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id})
		require.NoError(t, err, "listing works in any state")
		assert.Empty(t, out.Rotations)
	}
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String("1234abcd-12ab-34cd-56ef-1234567890ab")})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String("alias/any")})
	requireAPIError(t, err, "NotFoundException", "")
	_, err = e.client(principals[1], region).RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: aws.String(arn(disabled))})
	requireAPIError(t, err, "NotFoundException", "")

	// Keys AWS does not rotate: asymmetric, HMAC, custom key store, written
	// to the store directly. (Imported symmetric keys rotate on demand:
	// import_test.go.)
	e.close()
	db, err := store.OpenSQLite(e.dbPath)
	require.NoError(t, err)
	unrotatable := map[string]func(k *store.Key){
		"11111111-1111-4111-8111-111111111111": func(k *store.Key) { k.KeySpec, k.KeyUsage = "RSA_2048", "SIGN_VERIFY" },
		"22222222-2222-4222-8222-222222222222": func(k *store.Key) { k.KeySpec, k.KeyUsage = "HMAC_256", "GENERATE_VERIFY_MAC" },
		"44444444-4444-4444-8444-444444444444": func(k *store.Key) { k.Origin, k.CustomKeyStoreID = "AWS_CLOUDHSM", "cks-1234567890abcdef0" },
	}
	// A key's custom key store must exist for the store to take the key.
	require.NoError(t, db.CreateKeyStore(bg(), &store.KeyStore{ID: "cks-1234567890abcdef0", Account: account, Region: region,
		Name: "unrotatable", ClusterID: "cluster-undeclared1", CreationDate: time.Now()}, 10))
	for id, set := range unrotatable {
		k := &store.Key{Account: account, Region: region, ID: id, KeyUsage: "ENCRYPT_DECRYPT", KeySpec: "SYMMETRIC_DEFAULT",
			Origin: "AWS_KMS", State: "Enabled", CreationDate: time.Now(), Policy: defaultKeyPolicy}
		set(k)
		require.NoError(t, db.CreateKey(bg(), k, nil))
	}
	require.NoError(t, db.Close())
	e.start()
	c = e.admin()
	// A key of another origin is refused by its origin; an asymmetric or
	// HMAC key with no message, as AWS answers.
	messages := map[string]string{
		"44444444-4444-4444-8444-444444444444": arn("44444444-4444-4444-8444-444444444444") + " origin is AWS_CLOUDHSM which is not valid for this operation.",
	}
	for id := range unrotatable {
		t.Run(id, func(t *testing.T) {
			check := func(err error) {
				t.Helper()
				if msg := messages[id]; msg != "" {
					requireAPIError(t, err, "UnsupportedOperationException", msg)
				} else {
					requireAPIErrorNoMessage(t, err, "UnsupportedOperationException")
				}
			}
			_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
			check(err)
			_, err = c.ListKeyRotations(bg(), &awskms.ListKeyRotationsInput{KeyId: &id})
			check(err)
			_, err = c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id})
			check(err)
			_, err = c.DisableKeyRotation(bg(), &awskms.DisableKeyRotationInput{KeyId: &id})
			check(err)
			_, err = c.GetKeyRotationStatus(bg(), &awskms.GetKeyRotationStatusInput{KeyId: &id})
			check(err)
		})
	}
}

// TestReconcileDestroysUnrecordedRotation stands in for a process killed
// between making a rotation's token object and recording it: the next start
// destroys that object (no ciphertext can name it) and reports it, while a
// stranger's object is only reported.
func TestReconcileDestroysUnrecordedRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id := e.createKey(c)
	_, err := c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err)
	enc, err := c.Encrypt(bg(), &awskms.EncryptInput{KeyId: &id, Plaintext: []byte("kept")})
	require.NoError(t, err)
	e.close()

	tok, err := hsm.OpenToken(hsm.TokenConfig{Module: e.tok.Module, Label: e.tok.Label})
	require.NoError(t, err)
	require.NoError(t, tok.Login(bg(), e.tok.UserPIN))
	uuid, err := hex.DecodeString(string(bytes.ReplaceAll([]byte(id), []byte("-"), nil)))
	require.NoError(t, err)
	material := make([]byte, 32)
	rand.Read(material)
	_, err = tok.GenerateAESKey(bg(), append(uuid, material...), arn(id), hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	stranger := make([]byte, 48)
	rand.Read(stranger)
	_, err = tok.GenerateAESKey(bg(), stranger, "stranger", hsm.UsageEncrypt|hsm.UsageDecrypt)
	require.NoError(t, err)
	require.NoError(t, tok.Close())

	e.start()
	c = e.admin()
	assert.Equal(t, []string{arn(id) + " material " + hex.EncodeToString(material)}, e.report.AbandonedRotations)
	assert.Equal(t, []string{"stranger"}, e.report.OrphanObjects)
	assert.Empty(t, e.report.MissingMaterial)
	assert.Equal(t, 2, e.keyVersions(id), "the two recorded versions remain")

	rep, err := e.svc.Reconcile(bg())
	require.NoError(t, err)
	assert.Empty(t, rep.AbandonedRotations, "the first start already cleaned up")
	assert.Equal(t, []string{"stranger"}, rep.OrphanObjects)

	dec, err := c.Decrypt(bg(), &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	require.NoError(t, err)
	assert.Equal(t, "kept", string(dec.Plaintext))
	_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
	require.NoError(t, err)
	assert.Len(t, e.rotations(c, id, false), 2)
}

// TestDeleteRotatedKey: deleting a key destroys every version's object.
func TestDeleteRotatedKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.admin()
	id, kept := e.createKey(c), e.createKey(c)
	_, err := c.EnableKeyRotation(bg(), &awskms.EnableKeyRotationInput{KeyId: &id, RotationPeriodInDays: aws.Int32(90)})
	require.NoError(t, err)
	e.clock.Advance(90 * day)
	require.Equal(t, 1, e.rotateDue())
	for range 2 {
		_, err = c.RotateKeyOnDemand(bg(), &awskms.RotateKeyOnDemandInput{KeyId: &id})
		require.NoError(t, err)
	}
	require.Equal(t, 4, e.keyVersions(id))

	_, err = c.ScheduleKeyDeletion(bg(), &awskms.ScheduleKeyDeletionInput{KeyId: &id, PendingWindowInDays: aws.Int32(7)})
	require.NoError(t, err)
	e.clock.Advance(7*day + time.Minute)
	n, err := e.svc.Reap(bg())
	require.NoError(t, err)
	require.Equal(t, 1, n)
	assert.Equal(t, 0, e.keyVersions(id), "no version of the deleted key remains on the token")
	assert.Equal(t, 1, e.keyVersions(kept))
}

// defaultKeyPolicy is AWS's default key policy for the test account.
const defaultKeyPolicy = `{"Version":"2012-10-17","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow",
"Principal":{"AWS":"arn:aws:iam::` + account + `:root"},"Action":"kms:*","Resource":"*"}]}`
