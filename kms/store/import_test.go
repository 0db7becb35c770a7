package store

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImportedMaterial: what is recorded of imported material comes back
// as written, and KeysOfOrigin finds the keys of one origin.
func TestImportedMaterial(t *testing.T) {
	each(t, func(t *testing.T, d *db) {
		s := d.open(t)
		ctx := context.Background()
		k := newKey("111122223333", "us-east-1", "ext")
		k.Origin = "EXTERNAL"
		validTo := time.Unix(1800000000, 0).UTC()
		k.Materials = []Material{
			{ID: "aa", TokenID: []byte{1}, CreationDate: k.CreationDate, Import: &Import{Description: "first", ValidTo: validTo}},
			{ID: "bb", TokenID: []byte{2}, CreationDate: k.CreationDate, Import: &Import{PendingImport: true, PendingRotation: true}},
		}
		require.NoError(t, s.CreateKey(ctx, k, nil))
		require.NoError(t, s.CreateKey(ctx, newKey("111122223333", "us-east-1", "gen"), nil))
		got, err := s.GetKey(ctx, k.Account, k.Region, k.ID)
		require.NoError(t, err)
		assert.Equal(t, k.Materials, got.Materials)
		ext, err := s.KeysOfOrigin(ctx, "EXTERNAL")
		require.NoError(t, err)
		require.Len(t, ext, 1)
		assert.Equal(t, "ext", ext[0].ID)
	})
}
