package hsm

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Faults wraps a PKCS11 and makes chosen calls fail with chosen CKR codes,
// and counts every call. It exists for the error paths a real token cannot be
// made to take on demand; use real SoftHSM2 for everything else. Install it
// with TokenConfig.Wrap. Safe for concurrent use.
type Faults struct {
	next   PKCS11
	flags  uint          // ORed into every C_GetTokenInfo answer
	hidden map[uint]bool // mechanisms the token is made to lack
	rsaAES bool          // EmulateRSAAESKeyWrap
	edDSA  bool          // EmulateEdDSAUnwrap

	mu     sync.Mutex
	rules  map[string]*faultRule
	calls  map[string]int
	stalls map[string]chan struct{} // calls held until their channel closes
}

type faultRule struct {
	code  uint
	times int // remaining failures; negative means until Clear
}

// NewFaults returns a pass-through wrapper around next.
func NewFaults(next PKCS11) *Faults {
	return &Faults{next: next, rules: map[string]*faultRule{}, calls: map[string]int{}}
}

// Fail makes the next times calls of the Cryptoki function call (e.g.
// "C_Login") return code instead of reaching the token. A negative times
// fails every call until Clear.
func (f *Faults) Fail(call string, code uint, times int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules[call] = &faultRule{code: code, times: times}
}

// SetTokenFlags makes C_GetTokenInfo report flags (e.g. CKF_USER_PIN_LOCKED)
// on top of the token's own, until Clear.
func (f *Faults) SetTokenFlags(flags uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flags = flags
}

// Clear removes every injected failure.
func (f *Faults) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = map[string]*faultRule{}
	f.flags = 0
	f.hidden = nil
	f.rsaAES = false
	f.edDSA = false
}

// HideMechanism makes the token appear to lack mech, until Clear: it is left
// out of C_GetMechanismList and C_GetMechanismInfo fails with
// CKR_MECHANISM_INVALID. Token caches what it learned about mechanisms, so
// hide before the first use or on a fresh Token.
func (f *Faults) HideMechanism(mech uint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hidden == nil {
		f.hidden = map[uint]bool{}
	}
	f.hidden[mech] = true
}

func (f *Faults) isHidden(mech uint) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hidden[mech]
}

// Calls reports how many times call was made, failed or not.
func (f *Faults) Calls(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[call]
}

// CallsWith reports how many of the calls of call (only "C_UnwrapKey" is
// counted so) were made with the mechanism mech.
func (f *Faults) CallsWith(call string, mech uint) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[withMech(call, mech)]
}

func withMech(call string, mech uint) string { return fmt.Sprintf("%s/0x%X", call, mech) }

// EmulateRSAAESKeyWrap makes the token offer CKM_RSA_AES_KEY_WRAP for
// unwrapping, which SoftHSM2 2.6.1 lacks, until Clear: C_GetMechanismList
// lists it, C_GetMechanismInfo gives it CKF_UNWRAP, and C_UnwrapKey with it
// does on the token beneath what the mechanism does inside a token: the
// first modulus-length bytes unwrapped with CKM_RSA_PKCS_OAEP and the
// parameters' OAEP parameters into a session AES key, the rest unwrapped
// with that key by CKM_AES_KEY_WRAP_PAD into the caller's template, the
// AES key destroyed. OAEP parameters the token beneath refuses answer
// CKR_MECHANISM_PARAM_INVALID, as a token that cannot do them would. Only
// the caller's call is counted, not the two made beneath. Token caches
// what it learned about mechanisms: emulate before the first use.
func (f *Faults) EmulateRSAAESKeyWrap() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rsaAES = true
}

func (f *Faults) emulatesRSAAES() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rsaAES
}

// EmulateEdDSAUnwrap makes the token unwrap Ed25519 private keys from
// PKCS#8 and tell their public keys, which SoftHSM2 2.6.1 cannot, until
// Clear: C_UnwrapKey into a CKK_EC_EDWARDS private key template unwraps,
// with the same mechanism, into a readable session secret on the token
// beneath, reads and destroys it, and makes the key with C_CreateObject,
// CKA_PUBLIC_KEY_INFO set. PKCS#8 that is not Ed25519 answers
// CKR_TEMPLATE_INCONSISTENT. The material passes through this wrapper:
// test support only.
func (f *Faults) EmulateEdDSAUnwrap() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.edDSA = true
}

func (f *Faults) emulatesEdDSA(a []*pkcs11.Attribute) bool {
	f.mu.Lock()
	on := f.edDSA
	f.mu.Unlock()
	is := func(typ, v uint) bool {
		i := slices.IndexFunc(a, func(x *pkcs11.Attribute) bool { return x.Type == typ })
		return i >= 0 && ulong(a[i].Value) == v
	}
	return on && is(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY) && is(pkcs11.CKA_KEY_TYPE, ckkECEdwards)
}

// Stall holds every call of the Cryptoki function call (e.g. "C_Encrypt")
// before it reaches the token, until release is called: a device that
// stops answering, which a real token cannot be made to be on demand.
// Calls already held go on to the token when released.
func (f *Faults) Stall(call string) (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stalls == nil {
		f.stalls = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	f.stalls[call] = ch
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			if f.stalls[call] == ch {
				delete(f.stalls, call)
			}
			f.mu.Unlock()
			close(ch)
		})
	}
}

func (f *Faults) hit(call string) error {
	f.mu.Lock()
	if ch := f.stalls[call]; ch != nil {
		f.mu.Unlock()
		<-ch
		f.mu.Lock()
	}
	defer f.mu.Unlock()
	f.calls[call]++
	r := f.rules[call]
	if r == nil || r.times == 0 {
		return nil
	}
	if r.times > 0 {
		r.times--
	}
	return pkcs11.Error(r.code)
}

func (f *Faults) GetSlotList(tokenPresent bool) ([]uint, error) {
	if err := f.hit("C_GetSlotList"); err != nil {
		return nil, err
	}
	return f.next.GetSlotList(tokenPresent)
}

func (f *Faults) GetSlotInfo(slotID uint) (pkcs11.SlotInfo, error) {
	if err := f.hit("C_GetSlotInfo"); err != nil {
		return pkcs11.SlotInfo{}, err
	}
	return f.next.GetSlotInfo(slotID)
}

func (f *Faults) GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error) {
	if err := f.hit("C_GetTokenInfo"); err != nil {
		return pkcs11.TokenInfo{}, err
	}
	ti, err := f.next.GetTokenInfo(slotID)
	f.mu.Lock()
	ti.Flags |= f.flags
	f.mu.Unlock()
	return ti, err
}

func (f *Faults) GetMechanismList(slotID uint) ([]*pkcs11.Mechanism, error) {
	if err := f.hit("C_GetMechanismList"); err != nil {
		return nil, err
	}
	ms, err := f.next.GetMechanismList(slotID)
	out := ms[:0:0]
	for _, m := range ms {
		if !f.isHidden(m.Mechanism) && (m.Mechanism != pkcs11.CKM_RSA_AES_KEY_WRAP || !f.emulatesRSAAES()) {
			out = append(out, m)
		}
	}
	if err == nil && f.emulatesRSAAES() {
		out = append(out, pkcs11.NewMechanism(pkcs11.CKM_RSA_AES_KEY_WRAP, nil))
	}
	return out, err
}

func (f *Faults) GetMechanismInfo(slotID uint, m []*pkcs11.Mechanism) (pkcs11.MechanismInfo, error) {
	if err := f.hit("C_GetMechanismInfo"); err != nil {
		return pkcs11.MechanismInfo{}, err
	}
	if len(m) == 1 && f.isHidden(m[0].Mechanism) {
		return pkcs11.MechanismInfo{}, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)
	}
	if len(m) == 1 && m[0].Mechanism == pkcs11.CKM_RSA_AES_KEY_WRAP && f.emulatesRSAAES() {
		return pkcs11.MechanismInfo{MinKeySize: 2048, MaxKeySize: 4096, Flags: pkcs11.CKF_UNWRAP}, nil
	}
	return f.next.GetMechanismInfo(slotID, m)
}

func (f *Faults) OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error) {
	if err := f.hit("C_OpenSession"); err != nil {
		return 0, err
	}
	return f.next.OpenSession(slotID, flags)
}

func (f *Faults) CloseSession(sh pkcs11.SessionHandle) error {
	if err := f.hit("C_CloseSession"); err != nil {
		return err
	}
	return f.next.CloseSession(sh)
}

func (f *Faults) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	if err := f.hit("C_Login"); err != nil {
		return err
	}
	return f.next.Login(sh, userType, pin)
}

func (f *Faults) Logout(sh pkcs11.SessionHandle) error {
	if err := f.hit("C_Logout"); err != nil {
		return err
	}
	return f.next.Logout(sh)
}

func (f *Faults) InitPIN(sh pkcs11.SessionHandle, pin string) error {
	if err := f.hit("C_InitPIN"); err != nil {
		return err
	}
	return f.next.InitPIN(sh, pin)
}

func (f *Faults) SetPIN(sh pkcs11.SessionHandle, oldpin string, newpin string) error {
	if err := f.hit("C_SetPIN"); err != nil {
		return err
	}
	return f.next.SetPIN(sh, oldpin, newpin)
}

func (f *Faults) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := f.hit("C_GenerateKey"); err != nil {
		return 0, err
	}
	return f.next.GenerateKey(sh, m, temp)
}

func (f *Faults) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := f.hit("C_CopyObject"); err != nil {
		return 0, err
	}
	return f.next.CopyObject(sh, o, temp)
}

func (f *Faults) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := f.hit("C_CreateObject"); err != nil {
		return 0, err
	}
	return f.next.CreateObject(sh, temp)
}

func (f *Faults) DestroyObject(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) error {
	if err := f.hit("C_DestroyObject"); err != nil {
		return err
	}
	return f.next.DestroyObject(sh, oh)
}

func (f *Faults) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrappingkey, key pkcs11.ObjectHandle) ([]byte, error) {
	if err := f.hit("C_WrapKey"); err != nil {
		return nil, err
	}
	return f.next.WrapKey(sh, m, wrappingkey, key)
}

func (f *Faults) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingkey pkcs11.ObjectHandle, wrappedkey []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(m) == 1 {
		f.mu.Lock()
		f.calls[withMech("C_UnwrapKey", m[0].Mechanism)]++
		f.mu.Unlock()
	}
	if err := f.hit("C_UnwrapKey"); err != nil {
		return 0, err
	}
	if f.emulatesEdDSA(a) {
		return f.unwrapEdDSA(sh, m, unwrappingkey, wrappedkey, a)
	}
	return f.unwrap(sh, m, unwrappingkey, wrappedkey, a)
}

// unwrap is C_UnwrapKey past the counting and the failures.
func (f *Faults) unwrap(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(m) == 1 && m[0].Mechanism == pkcs11.CKM_RSA_AES_KEY_WRAP && f.emulatesRSAAES() {
		return f.unwrapRSAAES(sh, m[0], key, wrapped, a)
	}
	return f.next.UnwrapKey(sh, m, key, wrapped, a)
}

// unwrapEdDSA is an unwrap into an Ed25519 private key (see
// EmulateEdDSAUnwrap).
func (f *Faults) unwrapEdDSA(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	g, err := f.unwrap(sh, m, key, wrapped, materialSecretTemplate(false))
	if err != nil {
		return 0, err
	}
	v, err := f.next.GetAttributeValue(sh, g, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if derr := f.next.DestroyObject(sh, g); err == nil {
		err = derr
	}
	if err != nil {
		return 0, err
	}
	k, err := x509.ParsePKCS8PrivateKey(v[0].Value)
	priv, ok := k.(ed25519.PrivateKey)
	if err != nil || !ok {
		return 0, pkcs11.Error(pkcs11.CKR_TEMPLATE_INCONSISTENT)
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return 0, err
	}
	oid, _ := asn1.Marshal(oidEd25519)
	return f.next.CreateObject(sh, append(append([]*pkcs11.Attribute(nil), a...),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oid),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, priv.Seed()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_KEY_INFO, spki)))
}

// unwrapRSAAES is CKM_RSA_AES_KEY_WRAP's unwrap (PKCS#11 v2.40 §2.1.21)
// done by its two halves on the token beneath.
func (f *Faults) unwrapRSAAES(sh pkcs11.SessionHandle, m *pkcs11.Mechanism, key pkcs11.ObjectHandle, wrapped []byte, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	p, ok := rsaAESParams(m)
	if !ok || (p.AESKeyBits != 128 && p.AESKeyBits != 192 && p.AESKeyBits != 256) {
		return 0, pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID)
	}
	mod, err := f.next.GetAttributeValue(sh, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
	if err != nil {
		return 0, err
	}
	k := (new(big.Int).SetBytes(mod[0].Value).BitLen() + 7) / 8
	if len(wrapped) <= k {
		return 0, pkcs11.Error(pkcs11.CKR_WRAPPED_KEY_LEN_RANGE)
	}
	oaep := p.OAEPParams
	e, err := f.next.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, &oaep)}, key, wrapped[:k], ephemeralAESTemplate())
	if refusesParams(err) {
		return 0, pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID)
	}
	if err != nil {
		return 0, err
	}
	h, err := f.next.UnwrapKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmAESKeyWrapPad, nil)}, e, wrapped[k:], a)
	if derr := f.next.DestroyObject(sh, e); derr != nil && err == nil {
		_ = f.next.DestroyObject(sh, h)
		return 0, derr
	}
	return h, err
}

// rsaAESParams reads the parameters of m, a CKM_RSA_AES_KEY_WRAP
// mechanism. miekg/pkcs11 keeps a mechanism's Go parameters in an
// unexported field and turns them into C memory only inside its own
// calls; this wrapper sits in front of those calls and must know the OAEP
// hash to ask the token beneath for the same, so it reads the field with
// reflect and unsafe. Test support only: nothing on hsm's own paths does.
func rsaAESParams(m *pkcs11.Mechanism) (*pkcs11.RSAAESKeyWrapParams, bool) {
	v := reflect.ValueOf(m).Elem().FieldByName("generator")
	if !v.IsValid() {
		return nil, false
	}
	p, ok := reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem().Interface().(*pkcs11.RSAAESKeyWrapParams)
	return p, ok && p != nil
}

func (f *Faults) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	if err := f.hit("C_FindObjectsInit"); err != nil {
		return err
	}
	return f.next.FindObjectsInit(sh, temp)
}

func (f *Faults) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	if err := f.hit("C_FindObjects"); err != nil {
		return nil, false, err
	}
	return f.next.FindObjects(sh, max)
}

func (f *Faults) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	if err := f.hit("C_FindObjectsFinal"); err != nil {
		return err
	}
	return f.next.FindObjectsFinal(sh)
}

func (f *Faults) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	if err := f.hit("C_GetAttributeValue"); err != nil {
		return nil, err
	}
	return f.next.GetAttributeValue(sh, o, a)
}

func (f *Faults) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	if err := f.hit("C_SetAttributeValue"); err != nil {
		return err
	}
	return f.next.SetAttributeValue(sh, o, a)
}

func (f *Faults) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := f.hit("C_EncryptInit"); err != nil {
		return err
	}
	return f.next.EncryptInit(sh, m, o)
}

func (f *Faults) Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	if err := f.hit("C_Encrypt"); err != nil {
		return nil, err
	}
	return f.next.Encrypt(sh, message)
}

func (f *Faults) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := f.hit("C_DecryptInit"); err != nil {
		return err
	}
	return f.next.DecryptInit(sh, m, o)
}

func (f *Faults) Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error) {
	if err := f.hit("C_Decrypt"); err != nil {
		return nil, err
	}
	return f.next.Decrypt(sh, cipher)
}

func (f *Faults) GenerateRandom(sh pkcs11.SessionHandle, length int) ([]byte, error) {
	if err := f.hit("C_GenerateRandom"); err != nil {
		return nil, err
	}
	return f.next.GenerateRandom(sh, length)
}

func (f *Faults) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	if err := f.hit("C_GenerateKeyPair"); err != nil {
		return 0, 0, err
	}
	return f.next.GenerateKeyPair(sh, m, public, private)
}

func (f *Faults) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, basekey pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := f.hit("C_DeriveKey"); err != nil {
		return 0, err
	}
	return f.next.DeriveKey(sh, m, basekey, a)
}

func (f *Faults) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if err := f.hit("C_SignInit"); err != nil {
		return err
	}
	return f.next.SignInit(sh, m, o)
}

func (f *Faults) Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	if err := f.hit("C_Sign"); err != nil {
		return nil, err
	}
	return f.next.Sign(sh, message)
}

func (f *Faults) VerifyInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle) error {
	if err := f.hit("C_VerifyInit"); err != nil {
		return err
	}
	return f.next.VerifyInit(sh, m, key)
}

func (f *Faults) Verify(sh pkcs11.SessionHandle, data []byte, signature []byte) error {
	if err := f.hit("C_Verify"); err != nil {
		return err
	}
	return f.next.Verify(sh, data, signature)
}
