package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// Error classes callers branch on. Every error returned by this package that
// came from the token also unwraps to the pkcs11.Error it carried, so
// errors.As(err, &pkcs11.Error{}) always reaches the raw CKR code.
var (
	ErrPINIncorrect          = errors.New("hsm: PIN incorrect")
	ErrPINLocked             = errors.New("hsm: PIN locked")
	ErrUserPINNotInitialized = errors.New("hsm: user PIN not initialised")
	ErrUserAlreadyLoggedIn   = errors.New("hsm: user already logged in")
	ErrAnotherUserLoggedIn   = errors.New("hsm: another user is logged in")
	ErrUserNotLoggedIn       = errors.New("hsm: user not logged in")
	ErrTokenNotFound         = errors.New("hsm: token not found")
	ErrTokenNotPresent       = errors.New("hsm: token not present")
	ErrDeviceRemoved         = errors.New("hsm: device removed")
	ErrDeviceError           = errors.New("hsm: device error")
	ErrMechanismNotSupported = errors.New("hsm: mechanism not supported")
	ErrObjectNotFound        = errors.New("hsm: object not found")
	ErrObjectAmbiguous       = errors.New("hsm: more than one object matches")
	ErrInvalidCiphertext     = errors.New("hsm: invalid ciphertext")
	ErrModuleLoad            = errors.New("hsm: cannot load PKCS#11 module")
	ErrClosed                = errors.New("hsm: token closed")
	// ErrSessionObjectLost: a session object from Unwrap or
	// CreatePublicKey is gone with the session that held it (a device
	// failure, a new login, a broken keeper session); make it again.
	ErrSessionObjectLost = errors.New("hsm: session object lost")
	// ErrNotWrappable: the token will not wrap this kind of key
	// (CKR_KEY_NOT_WRAPPABLE), e.g. SoftHSM2 2.6.1 an Ed25519 private key.
	ErrNotWrappable = errors.New("hsm: the token cannot wrap this kind of key")
)

// Error is a failed PKCS#11 call. It names the call and unwraps both to its
// class (one of the Err* values, when the code has one) and to the raw
// pkcs11.Error. It never holds PINs, key bytes or data.
type Error struct {
	Op    string       // the PKCS#11 function, e.g. "C_Login"
	Code  pkcs11.Error // the CKR_* return value
	class error
}

func (e *Error) Error() string {
	name := ckrName(uint(e.Code))
	if e.class != nil {
		return fmt.Sprintf("%s: %s (%s)", e.class, e.Op, name)
	}
	return fmt.Sprintf("hsm: %s: %s", e.Op, name)
}

// Unwrap makes both the class and the raw code reachable with errors.Is/As.
func (e *Error) Unwrap() []error {
	if e.class != nil {
		return []error{e.class, e.Code}
	}
	return []error{e.Code}
}

// wrap turns an error from the PKCS#11 layer into an *Error with its class.
// Errors that are not pkcs11.Error pass through untouched.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var code pkcs11.Error
	if !errors.As(err, &code) {
		return err
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	return &Error{Op: op, Code: code, class: classOf(uint(code))}
}

func classOf(rv uint) error {
	switch rv {
	case pkcs11.CKR_PIN_INCORRECT:
		return ErrPINIncorrect
	case pkcs11.CKR_PIN_LOCKED:
		return ErrPINLocked
	case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return ErrUserPINNotInitialized
	case pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		return ErrUserAlreadyLoggedIn
	case pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
		return ErrAnotherUserLoggedIn
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return ErrUserNotLoggedIn
	case pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return ErrTokenNotPresent
	case pkcs11.CKR_DEVICE_REMOVED:
		return ErrDeviceRemoved
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY:
		return ErrDeviceError
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID:
		return ErrMechanismNotSupported
	}
	return nil
}

// Code returns the CKR_* value carried by err, if any.
func Code(err error) (uint, bool) {
	var code pkcs11.Error
	if errors.As(err, &code) {
		return uint(code), true
	}
	return 0, false
}

// IsDeviceFailure reports whether err says the token or its device is gone
// or broken, as opposed to a problem with the request.
func IsDeviceFailure(err error) bool {
	return errors.Is(err, ErrTokenNotPresent) || errors.Is(err, ErrDeviceRemoved) || errors.Is(err, ErrDeviceError)
}

func isSessionError(rv uint) bool {
	switch rv {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_SESSION_COUNT, pkcs11.CKR_SESSION_EXISTS,
		pkcs11.CKR_SESSION_READ_ONLY, pkcs11.CKR_SESSION_READ_WRITE_SO_EXISTS,
		pkcs11.CKR_SESSION_READ_ONLY_EXISTS, pkcs11.CKR_OPERATION_ACTIVE:
		return true
	}
	return false
}

func isHandleError(rv uint) bool {
	switch rv {
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// ckrName gives the CKR_ constant name for a return value, from the table
// miekg/pkcs11 already carries ("pkcs11: 0xA0: CKR_PIN_INCORRECT").
func ckrName(rv uint) string {
	s := pkcs11.Error(rv).Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_0x%X", rv)
}
