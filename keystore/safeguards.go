package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
)

// Safeguards keep the tokens behind key stores from being lost or replaced
// unnoticed: the records of which token backs each store (see VerifyToken)
// and, for SoftHSM2 tokens, the copies of token.object taken before each
// call that rewrites it (see TokenBackups). A nil *Safeguards checks and
// copies nothing.
type Safeguards struct {
	Records TokenRecords  // nil: identities are not checked
	Backups *TokenBackups // nil: no SoftHSM2 file store to protect
	// Locker, if set, serialises VerifyIdentity across the processes
	// sharing Records, so that two nodes checking a token at once cannot
	// each put an identity object on it. (A custom store's login checks
	// its token too: its caller serialises logins.)
	Locker Locker
}

// SetSafeguards makes every custom key store m registers from now on check
// its token's identity when it connects and copy a SoftHSM2 token's
// token.object before logging in or changing the PIN. Call it before
// AddCustom.
func (m *Manager) SetSafeguards(g *Safeguards) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.guard = g
}

// Safeguards returns what SetSafeguards set (nil if nothing).
func (m *Manager) Safeguards() *Safeguards {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.guard
}

// BeforeRewrite is to be called right before a call that makes SoftHSM2
// rewrite token.object (C_Login, C_SetPIN, C_InitPIN) on the token info
// describes: see TokenBackups.Save.
func (g *Safeguards) BeforeRewrite(info hsm.TokenInfo) error {
	if g == nil {
		return nil
	}
	return g.Backups.Save(info)
}

// verify checks the identity of a store's token after login.
func (g *Safeguards) verify(ctx context.Context, tok *hsm.Token, storeID, clusterID string, log hclog.Logger) error {
	if g == nil || g.Records == nil {
		return nil
	}
	return VerifyToken(ctx, tok, storeID, clusterID, g.Records, log)
}

// lockIdentity takes the lock under which a store's token identity is
// read, made and recorded.
func (g *Safeguards) lockIdentity(ctx context.Context, storeID string) (func(), error) {
	if g == nil || g.Locker == nil {
		return func() {}, nil
	}
	return g.Locker.Lock(ctx, "token-identity/"+storeID)
}

// Explain turns a failure to find or accept a store's token
// (hsm.ErrTokenNotFound, ErrWrongToken, ErrTokenDamaged) into a
// TokenProblem that names the token, where it lives and what to do. Other
// errors are returned unchanged.
func (g *Safeguards) Explain(ctx context.Context, storeID string, cfg hsm.TokenConfig, err error) error {
	var already *TokenProblem
	if err == nil || errors.As(err, &already) ||
		!(errors.Is(err, hsm.ErrTokenNotFound) || errors.Is(err, ErrWrongToken) || errors.Is(err, ErrTokenDamaged)) {
		return err
	}
	p := &TokenProblem{Store: StoreDescription(storeID), Token: cfg, Problem: strings.TrimPrefix(err.Error(), "keystore: "), Err: err}
	var recorded TokenIdentity
	if g != nil && g.Records != nil {
		if id, ok, rerr := g.Records.TokenIdentity(ctx, storeID); rerr == nil && ok {
			recorded = id
			p.Serial = id.Serial
		}
	}
	if g == nil || g.Backups == nil {
		return p
	}
	if t, ok := g.Backups.Find(cfg, recorded.Serial); ok {
		p.Dir = t.Describe()
		if p.Serial == "" {
			p.Serial = t.Serial
		}
		if errors.Is(err, hsm.ErrTokenNotFound) {
			if t.Damage != nil {
				p.Problem = "SoftHSM2 cannot load it, and hsmkms holds no copy of its token.object to restore"
			} else {
				p.Problem = "its directory is whole but the module does not offer it (was SoftHSM2 pointed at another configuration?)"
			}
		}
		return p
	}
	if errors.Is(err, hsm.ErrTokenNotFound) {
		var damaged []string
		if dirs, derr := g.Backups.Store().Tokens(); derr == nil {
			for _, t := range dirs {
				if t.Damage != nil {
					damaged = append(damaged, t.Describe())
				}
			}
		}
		p.Problem = fmt.Sprintf("the module offers no such token and SoftHSM2's tokendir %s has no directory known to hold it", g.Backups.Store().TokenDir)
		if recorded.Serial != "" {
			p.Problem += fmt.Sprintf(" (the database recorded it on %s)", recorded.Recorded.UTC().Format("2006-01-02"))
		}
		if len(damaged) > 0 {
			p.Problem += "; SoftHSM2 cannot read " + strings.Join(damaged, ", ") + ", which may be it"
		}
	}
	return p
}
