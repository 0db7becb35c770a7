package kms

import (
	"context"

	"github.com/hsmkms/hsmkms/kms/wire"
)

// unsupported answers an operation hsmkms does not implement yet with AWS's
// UnsupportedOperationException, never a fake success. The README's support
// table lists them.
func unsupported(op string) wire.Route {
	return wire.Route{Handle: func(context.Context, *wire.Call, []byte) (any, error) {
		return nil, wire.Errorf(wire.UnsupportedOperation, "%s is not supported by hsmkms.", op)
	}}
}
