package hsm

import (
	"errors"
	"time"

	"github.com/miekg/pkcs11"
)

// Observer is told of every PKCS#11 call a Token makes and of every wait
// for one of its sessions: what the service's metrics are made of; hsm
// knows nothing of how they are kept. Implementations must be fast and
// safe for concurrent use: they are called on the hot path.
type Observer interface {
	// PKCS11Call reports one Cryptoki call (call is "C_Encrypt", ...), how
	// long it took, and the CKR_ name it failed with ("" on success,
	// "other" for a failure that carried no CKR code).
	PKCS11Call(call string, d time.Duration, ckr string)
	// SessionWait reports a call that found every session of the pool
	// busy, and how long it waited (whether it got one or not).
	SessionWait(d time.Duration)
}

// observed wraps a PKCS11 and reports each call to an Observer. OpenToken
// puts it around whatever TokenConfig.Wrap installed, so injected faults
// are reported as the token's answers.
type observed struct {
	next PKCS11
	obs  Observer
}

var _ PKCS11 = (*observed)(nil)

// report is deferred with a pointer to the call's error, so it reads the
// error the call returned.
func (w *observed) report(call string, start time.Time, err *error) {
	ckr := ""
	if *err != nil {
		var code pkcs11.Error
		if errors.As(*err, &code) {
			ckr = ckrName(uint(code))
		} else {
			ckr = "other"
		}
	}
	w.obs.PKCS11Call(call, time.Since(start), ckr)
}

func (w *observed) GetSlotList(tokenPresent bool) (_ []uint, err error) {
	defer w.report("C_GetSlotList", time.Now(), &err)
	return w.next.GetSlotList(tokenPresent)
}

func (w *observed) GetSlotInfo(slotID uint) (_ pkcs11.SlotInfo, err error) {
	defer w.report("C_GetSlotInfo", time.Now(), &err)
	return w.next.GetSlotInfo(slotID)
}

func (w *observed) GetTokenInfo(slotID uint) (_ pkcs11.TokenInfo, err error) {
	defer w.report("C_GetTokenInfo", time.Now(), &err)
	return w.next.GetTokenInfo(slotID)
}

func (w *observed) GetMechanismList(slotID uint) (_ []*pkcs11.Mechanism, err error) {
	defer w.report("C_GetMechanismList", time.Now(), &err)
	return w.next.GetMechanismList(slotID)
}

func (w *observed) GetMechanismInfo(slotID uint, m []*pkcs11.Mechanism) (_ pkcs11.MechanismInfo, err error) {
	defer w.report("C_GetMechanismInfo", time.Now(), &err)
	return w.next.GetMechanismInfo(slotID, m)
}

func (w *observed) OpenSession(slotID uint, flags uint) (_ pkcs11.SessionHandle, err error) {
	defer w.report("C_OpenSession", time.Now(), &err)
	return w.next.OpenSession(slotID, flags)
}

func (w *observed) CloseSession(sh pkcs11.SessionHandle) (err error) {
	defer w.report("C_CloseSession", time.Now(), &err)
	return w.next.CloseSession(sh)
}

func (w *observed) Login(sh pkcs11.SessionHandle, userType uint, pin string) (err error) {
	defer w.report("C_Login", time.Now(), &err)
	return w.next.Login(sh, userType, pin)
}

func (w *observed) Logout(sh pkcs11.SessionHandle) (err error) {
	defer w.report("C_Logout", time.Now(), &err)
	return w.next.Logout(sh)
}

func (w *observed) InitPIN(sh pkcs11.SessionHandle, pin string) (err error) {
	defer w.report("C_InitPIN", time.Now(), &err)
	return w.next.InitPIN(sh, pin)
}

func (w *observed) SetPIN(sh pkcs11.SessionHandle, oldpin string, newpin string) (err error) {
	defer w.report("C_SetPIN", time.Now(), &err)
	return w.next.SetPIN(sh, oldpin, newpin)
}

func (w *observed) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (_ pkcs11.ObjectHandle, err error) {
	defer w.report("C_GenerateKey", time.Now(), &err)
	return w.next.GenerateKey(sh, m, temp)
}

func (w *observed) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, basekey pkcs11.ObjectHandle, a []*pkcs11.Attribute) (_ pkcs11.ObjectHandle, err error) {
	defer w.report("C_DeriveKey", time.Now(), &err)
	return w.next.DeriveKey(sh, m, basekey, a)
}

func (w *observed) DestroyObject(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) (err error) {
	defer w.report("C_DestroyObject", time.Now(), &err)
	return w.next.DestroyObject(sh, oh)
}

func (w *observed) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, temp []*pkcs11.Attribute) (_ pkcs11.ObjectHandle, err error) {
	defer w.report("C_CopyObject", time.Now(), &err)
	return w.next.CopyObject(sh, o, temp)
}

func (w *observed) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (_ pkcs11.ObjectHandle, err error) {
	defer w.report("C_CreateObject", time.Now(), &err)
	return w.next.CreateObject(sh, temp)
}

func (w *observed) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (err error) {
	defer w.report("C_FindObjectsInit", time.Now(), &err)
	return w.next.FindObjectsInit(sh, temp)
}

func (w *observed) FindObjectsFinal(sh pkcs11.SessionHandle) (err error) {
	defer w.report("C_FindObjectsFinal", time.Now(), &err)
	return w.next.FindObjectsFinal(sh)
}

func (w *observed) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) (_ []*pkcs11.Attribute, err error) {
	defer w.report("C_GetAttributeValue", time.Now(), &err)
	return w.next.GetAttributeValue(sh, o, a)
}

func (w *observed) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) (err error) {
	defer w.report("C_EncryptInit", time.Now(), &err)
	return w.next.EncryptInit(sh, m, o)
}

func (w *observed) Encrypt(sh pkcs11.SessionHandle, message []byte) (_ []byte, err error) {
	defer w.report("C_Encrypt", time.Now(), &err)
	return w.next.Encrypt(sh, message)
}

func (w *observed) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) (err error) {
	defer w.report("C_DecryptInit", time.Now(), &err)
	return w.next.DecryptInit(sh, m, o)
}

func (w *observed) Decrypt(sh pkcs11.SessionHandle, cipher []byte) (_ []byte, err error) {
	defer w.report("C_Decrypt", time.Now(), &err)
	return w.next.Decrypt(sh, cipher)
}

func (w *observed) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) (err error) {
	defer w.report("C_SignInit", time.Now(), &err)
	return w.next.SignInit(sh, m, o)
}

func (w *observed) Sign(sh pkcs11.SessionHandle, message []byte) (_ []byte, err error) {
	defer w.report("C_Sign", time.Now(), &err)
	return w.next.Sign(sh, message)
}

func (w *observed) VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle) (err error) {
	defer w.report("C_VerifyInit", time.Now(), &err)
	return w.next.VerifyInit(sh, m, key)
}

func (w *observed) Verify(sh pkcs11.SessionHandle, data []byte, signature []byte) (err error) {
	defer w.report("C_Verify", time.Now(), &err)
	return w.next.Verify(sh, data, signature)
}

func (w *observed) GenerateRandom(sh pkcs11.SessionHandle, length int) (_ []byte, err error) {
	defer w.report("C_GenerateRandom", time.Now(), &err)
	return w.next.GenerateRandom(sh, length)
}

func (w *observed) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (_, _ pkcs11.ObjectHandle, err error) {
	defer w.report("C_GenerateKeyPair", time.Now(), &err)
	return w.next.GenerateKeyPair(sh, m, public, private)
}

func (w *observed) FindObjects(sh pkcs11.SessionHandle, max int) (_ []pkcs11.ObjectHandle, _ bool, err error) {
	defer w.report("C_FindObjects", time.Now(), &err)
	return w.next.FindObjects(sh, max)
}

func (w *observed) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) (err error) {
	defer w.report("C_SetAttributeValue", time.Now(), &err)
	return w.next.SetAttributeValue(sh, o, a)
}

func (w *observed) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrappingkey, key pkcs11.ObjectHandle) (_ []byte, err error) {
	defer w.report("C_WrapKey", time.Now(), &err)
	return w.next.WrapKey(sh, m, wrappingkey, key)
}

func (w *observed) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingkey pkcs11.ObjectHandle, wrappedkey []byte, a []*pkcs11.Attribute) (_ pkcs11.ObjectHandle, err error) {
	defer w.report("C_UnwrapKey", time.Now(), &err)
	return w.next.UnwrapKey(sh, m, unwrappingkey, wrappedkey, a)
}
