package kms

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hsmkms/hsmkms/kms/store"
	"github.com/hsmkms/hsmkms/kms/wire"
	"github.com/stretchr/testify/require"
)

// TestCheckState is AWS's key-state table for the operations hsmkms has.
func TestCheckState(t *testing.T) {
	t.Parallel()
	arn := "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	cases := []struct {
		state KeyState
		class opClass
		want  string // exception, "" = allowed
		msg   string
	}{
		{StateEnabled, classCrypto, "", ""},
		{StateDisabled, classCrypto, wire.Disabled, arn + " is disabled."},
		{StatePendingDeletion, classCrypto, wire.KMSInvalidState, arn + " is pending deletion."},
		{StateUnavailable, classCrypto, wire.KMSInvalidState, arn + " is unavailable."},
		{StateCreating, classCrypto, wire.KMSInvalidState, arn + " is Creating."},
		{StateEnabled, classEnableDisable, "", ""},
		{StateDisabled, classEnableDisable, "", ""},
		{StatePendingDeletion, classEnableDisable, wire.KMSInvalidState, arn + " is pending deletion."},
		{StateEnabled, classManage, "", ""},
		{StateDisabled, classManage, "", ""},
		{StatePendingDeletion, classManage, wire.KMSInvalidState, arn + " is pending deletion."},
		{StateEnabled, classRead, "", ""},
		{StateDisabled, classRead, "", ""},
		{StatePendingDeletion, classRead, "", ""},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/class%d", c.state, c.class), func(t *testing.T) {
			k := &store.Key{Account: "111122223333", Region: "us-west-2", ID: "1234abcd-12ab-34cd-56ef-1234567890ab", State: string(c.state)}
			err := checkState(k, c.class)
			if c.want == "" {
				require.NoError(t, err, "%s/%d", c.state, c.class)
				return
			}
			var we *wire.Error
			require.True(t, errors.As(err, &we), "%s/%d: %v", c.state, c.class, err)
			require.Equal(t, c.want, we.Type)
			require.Equal(t, c.msg, we.Message)
		})
	}
}
