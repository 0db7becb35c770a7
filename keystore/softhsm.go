package keystore

// SoftHSM2's file object store, and what hsmkms does so that a crash
// cannot lose a token kept in it.
//
// SoftHSM2 2.6 (objectstore.backend = file) keeps each token in a directory
// of its tokendir, named by a UUID from which the token's serial is taken.
// The directory's token.object holds the label, serial and flags and the SO
// and user PIN blobs, each of which wraps the one token key that encrypts
// every private object file beside it. SoftHSM2 rewrites token.object in
// place on every C_Login (it stores the token flags), C_SetPIN and
// C_InitPIN: it truncates the file and writes it again through a stdio
// buffer that is flushed when the file is closed. A process killed in
// between leaves token.object empty; SoftHSM2 then skips the directory, and
// the token, its keys and everything encrypted under them are out of reach
// although their files are intact.
//
// Real HSMs change a PIN atomically; this is a SoftHSM2-only measure.
// hsmkms keeps, in a directory of its own, a copy of a token's token.object
// taken right before each call it makes that rewrites the file, and puts
// the copy back when it finds the token damaged at the next start, before
// the module is loaded: SoftHSM2 reads its token directories once, at
// C_Initialize. The object files are never copied: they are written once,
// each to a new file, and a restored token.object opens them all again
// (the token key it wraps never changes).

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hsmkms/hsmkms/hsm"
)

// SoftHSMManufacturer is the manufacturer SoftHSM2 reports for its tokens
// (for listing them: hsm.TokenInfo.SoftHSM tells a token's).
const SoftHSMManufacturer = hsm.SoftHSMManufacturer

// defaultSoftHSMConf is where Debian's SoftHSM2 reads its configuration
// when SOFTHSM2_CONF is not set.
const defaultSoftHSMConf = "/etc/softhsm/softhsm2.conf"

// ErrTokenDamaged: a SoftHSM2 token's token.object cannot be read, so
// SoftHSM2 does not offer the token.
var ErrTokenDamaged = errors.New("keystore: SoftHSM2 token damaged")

// IsSoftHSM reports whether module is SoftHSM2's PKCS#11 library, by its
// file name (libsofthsm2.so wherever it is installed).
func IsSoftHSM(module string) bool { return strings.HasPrefix(filepath.Base(module), "libsofthsm2") }

// SoftHSMStore is a SoftHSM2 file object store.
type SoftHSMStore struct {
	Conf     string // the configuration file that names it
	TokenDir string // absolute path of its tokendir
}

// FindSoftHSMStore returns the file object store SoftHSM2 uses in this
// process: the one named by its configuration (SOFTHSM2_CONF, else
// /etc/softhsm/softhsm2.conf). ok is false when that configuration does not
// exist or chooses the database backend, whose writes are transactional.
func FindSoftHSMStore() (_ SoftHSMStore, ok bool, err error) {
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		conf = defaultSoftHSMConf
	}
	f, err := os.Open(conf)
	if errors.Is(err, os.ErrNotExist) {
		return SoftHSMStore{}, false, nil
	}
	if err != nil {
		return SoftHSMStore{}, false, fmt.Errorf("keystore: SoftHSM2 configuration: %w", err)
	}
	defer f.Close()
	st := SoftHSMStore{Conf: conf}
	backend := "file"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, found := strings.Cut(line, "=")
		if !found {
			continue
		}
		switch strings.TrimSpace(k) {
		case "directories.tokendir":
			st.TokenDir = strings.TrimSpace(v)
		case "objectstore.backend":
			backend = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return SoftHSMStore{}, false, fmt.Errorf("keystore: SoftHSM2 configuration %s: %w", conf, err)
	}
	if backend != "file" || st.TokenDir == "" {
		return SoftHSMStore{}, false, nil
	}
	if st.TokenDir, err = filepath.Abs(st.TokenDir); err != nil {
		return SoftHSMStore{}, false, err
	}
	return st, true, nil
}

// SoftHSMToken is one token directory of a store.
type SoftHSMToken struct {
	Dir    string // absolute path of the token's directory
	Serial string // the token's serial, as SoftHSM2 derives it from the directory's name
	Label  string // from token.object; "" when it cannot be read
	// Damage says why SoftHSM2 cannot load the token (it wraps
	// ErrTokenDamaged); nil when token.object is whole.
	Damage error

	userPIN bool // token.object holds a user PIN blob
}

// serialFromDir is the serial SoftHSM2 gives the token in a directory it
// named: characters 19-22 and 24-35 of the UUID ("" for other names).
func serialFromDir(name string) string {
	if len(name) != 36 || name[8] != '-' || name[13] != '-' || name[18] != '-' || name[23] != '-' {
		return ""
	}
	return name[19:23] + name[24:]
}

// Tokens lists the store's token directories, damaged ones included (which
// is what the module cannot do: it skips them).
func (s SoftHSMStore) Tokens() ([]SoftHSMToken, error) {
	entries, err := os.ReadDir(s.TokenDir)
	if err != nil {
		return nil, fmt.Errorf("keystore: SoftHSM2 tokendir: %w", err)
	}
	var out []SoftHSMToken
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		t := SoftHSMToken{Dir: filepath.Join(s.TokenDir, e.Name()), Serial: serialFromDir(e.Name())}
		obj, _, err := readTokenObject(t.Dir)
		if err != nil {
			t.Damage = err
		} else {
			t.Label, t.userPIN = obj.label, obj.userPIN
			if t.Serial == "" {
				t.Serial = obj.serial
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// tokenBySerial finds the directory of the token with serial: by its name
// when SoftHSM2 named it, else by reading every token.object.
func (s SoftHSMStore) tokenBySerial(serial string) (SoftHSMToken, bool, error) {
	entries, err := os.ReadDir(s.TokenDir)
	if err != nil {
		return SoftHSMToken{}, false, fmt.Errorf("keystore: SoftHSM2 tokendir: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && serial != "" && serialFromDir(e.Name()) == serial {
			return SoftHSMToken{Dir: filepath.Join(s.TokenDir, e.Name()), Serial: serial}, true, nil
		}
	}
	toks, err := s.Tokens()
	if err != nil {
		return SoftHSMToken{}, false, err
	}
	for _, t := range toks {
		if serial != "" && t.Serial == serial {
			return t, true, nil
		}
	}
	return SoftHSMToken{}, false, nil
}

// Matches reports whether the token is the one cfg selects.
func (t SoftHSMToken) Matches(cfg hsm.TokenConfig) bool {
	return (cfg.Label != "" && t.Label == cfg.Label) || (cfg.Serial != "" && t.Serial == cfg.Serial)
}

// tokenObject is what hsmkms reads from a token.object.
type tokenObject struct {
	label, serial    string
	soPIN, userPIN   bool
	flags, attrCount uint64
}

// SoftHSM2's attribute kinds in an object file, and the vendor attributes
// of its token object (OSAttributes.h: CKA_VENDOR_DEFINED + 0x5349…).
const (
	kindBool    = 1
	kindULong   = 2
	kindBytes   = 3
	kindAttrMap = 4
	kindMechSet = 5

	attrTokenLabel  = 0x80005349
	attrTokenSerial = 0x8000534A
	attrTokenFlags  = 0x8000534B
	attrSOPIN       = 0x8000534C
	attrUserPIN     = 0x8000534D
)

// readTokenObject reads and checks dir's token.object.
func readTokenObject(dir string) (tokenObject, []byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, "token.object"))
	if errors.Is(err, os.ErrNotExist) {
		return tokenObject{}, nil, fmt.Errorf("%w: token.object is missing", ErrTokenDamaged)
	}
	if err != nil {
		return tokenObject{}, nil, fmt.Errorf("%w: %v", ErrTokenDamaged, err)
	}
	obj, err := parseTokenObject(b)
	return obj, b, err
}

// parseTokenObject checks that b is a whole SoftHSM2 token object, as
// ObjectFile::refresh reads it: a generation number, then attributes
// (type, kind, value; integers are 8 bytes big-endian) up to the end of the
// file, and among them the label, serial, flags and SO PIN blob without
// which SoftHSM2 cannot use the token. The user PIN blob is optional (a
// token whose SO has not set it); Repair compares it with the copy.
func parseTokenObject(b []byte) (tokenObject, error) {
	if len(b) == 0 {
		return tokenObject{}, fmt.Errorf("%w: token.object is empty", ErrTokenDamaged)
	}
	cut := func(at int) error {
		return fmt.Errorf("%w: token.object ends inside an attribute (%d bytes, cut at byte %d)", ErrTokenDamaged, len(b), at)
	}
	var obj tokenObject
	p := 0
	u64 := func() (uint64, bool) {
		if len(b)-p < 8 {
			return 0, false
		}
		v := binary.BigEndian.Uint64(b[p:])
		p += 8
		return v, true
	}
	if _, ok := u64(); !ok { // the generation
		return obj, cut(p)
	}
	for p < len(b) {
		start := p
		typ, ok1 := u64()
		kind, ok2 := u64()
		if !ok1 || !ok2 {
			return obj, cut(start)
		}
		var value []byte
		switch kind {
		case kindBool:
			if len(b)-p < 1 {
				return obj, cut(start)
			}
			p++
		case kindULong:
			v, ok := u64()
			if !ok {
				return obj, cut(start)
			}
			if typ == attrTokenFlags {
				obj.flags = v
			}
		case kindBytes, kindAttrMap:
			n, ok := u64()
			if !ok || n > uint64(len(b)-p) {
				return obj, cut(start)
			}
			value = b[p : p+int(n)]
			p += int(n)
		case kindMechSet:
			n, ok := u64()
			if !ok || n > uint64(len(b)-p)/8 {
				return obj, cut(start)
			}
			p += int(n) * 8
		default:
			return obj, fmt.Errorf("%w: token.object holds an attribute of unknown kind %d at byte %d", ErrTokenDamaged, kind, start)
		}
		obj.attrCount++
		switch typ {
		case attrTokenLabel:
			obj.label = strings.TrimRight(string(value), " \x00")
		case attrTokenSerial:
			obj.serial = strings.TrimRight(string(value), " \x00")
		case attrSOPIN:
			obj.soPIN = len(value) > 0
		case attrUserPIN:
			obj.userPIN = len(value) > 0
		}
	}
	var missing []string
	if obj.label == "" {
		missing = append(missing, "label")
	}
	if obj.serial == "" {
		missing = append(missing, "serial")
	}
	if obj.flags == 0 {
		missing = append(missing, "flags")
	}
	if !obj.soPIN {
		missing = append(missing, "SO PIN")
	}
	if len(missing) > 0 {
		return obj, fmt.Errorf("%w: token.object lacks the token's %s", ErrTokenDamaged, strings.Join(missing, ", "))
	}
	return obj, nil
}

// TokenBackups keeps the copies of SoftHSM2 token.object files, one file per
// token directory, mode 0600, in a directory of hsmkms's own (never inside
// SoftHSM2's tokendir, which SoftHSM2 scans and an operator may wipe). A
// nil *TokenBackups protects nothing: every method is then a no-op. Safe
// for concurrent use.
type TokenBackups struct {
	dir   string
	store SoftHSMStore
	mu    sync.Mutex // one copy or restore at a time in this process
}

// NewTokenBackups keeps copies in dir (created 0700) for the SoftHSM2 file
// store this process uses. It returns nil, and no error, when SoftHSM2 has
// no file store here: then there is nothing it could protect.
func NewTokenBackups(dir string) (*TokenBackups, error) {
	st, ok, err := FindSoftHSMStore()
	if err != nil || !ok {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: token copies: %w", err)
	}
	return &TokenBackups{dir: dir, store: st}, nil
}

// Dir is where the copies are kept.
func (b *TokenBackups) Dir() string { return b.dir }

// Store is the SoftHSM2 file store the copies are of.
func (b *TokenBackups) Store() SoftHSMStore { return b.store }

func (b *TokenBackups) copyPath(tokenDir string) string {
	return filepath.Join(b.dir, filepath.Base(tokenDir)+".token.object")
}

// Save copies the token.object of info's token, the SoftHSM2 token about to
// be logged in to or to have a PIN changed, if it is whole. Call it right
// before each such call: the copy is what Repair puts back if the call is
// cut short. Tokens of other modules, and SoftHSM2 tokens outside this
// store, are left alone. A damaged token.object is refused
// (ErrTokenDamaged): the copy of it taken earlier is what must survive.
func (b *TokenBackups) Save(info hsm.TokenInfo) error {
	if b == nil || !info.SoftHSM() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	tok, found, err := b.store.tokenBySerial(info.Serial)
	if err != nil || !found {
		return err
	}
	// Another process's write (unlocked while its buffer is flushed) can
	// show an empty file for a moment; our own writes are serialised.
	var data []byte
	for try := 0; ; try++ {
		var obj tokenObject
		obj, data, err = readTokenObject(tok.Dir)
		if err == nil && obj.serial != info.Serial {
			return fmt.Errorf("%w: %s holds serial %q, not %q", ErrTokenDamaged, tok.Dir, obj.serial, info.Serial)
		}
		if err == nil || try == 10 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("keystore: not copying token %q (directory %s): %w", info.Label, tok.Dir, err)
	}
	return writeFileSync(b.copyPath(tok.Dir), data)
}

// copyOf reads and checks the copy kept for a token directory.
func (b *TokenBackups) copyOf(tokenDir string) (tokenObject, []byte, bool) {
	data, err := os.ReadFile(b.copyPath(tokenDir))
	if err != nil {
		return tokenObject{}, nil, false
	}
	obj, err := parseTokenObject(data)
	return obj, data, err == nil
}

// RepairReport is what Repair did and found.
type RepairReport struct {
	// Restored are the damaged tokens whose token.object was put back
	// from the copy (Label from the copy, Damage what was wrong).
	Restored []SoftHSMToken
	// Unrepaired are damaged token directories hsmkms holds no copy for.
	Unrepaired []SoftHSMToken
	// Vanished are tokens hsmkms holds a copy of whose directory is gone:
	// their object files went with it, so the copy alone cannot bring
	// them back, and it is not put anywhere.
	Vanished []SoftHSMToken
}

// Repair runs before the module is loaded in this process. It restores the
// token.object of every damaged token directory it holds a copy of, and
// refreshes the copy of every whole token that tokens selects (their state
// before this process logs in to them). A directory whose user PIN blob is
// missing while the copy has one counts as damaged: SoftHSM2 never removes
// a user PIN, a write cut short between attributes does.
func (b *TokenBackups) Repair(tokens []hsm.TokenConfig) (RepairReport, error) {
	var r RepairReport
	if b == nil {
		return r, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	dirs, err := b.store.Tokens()
	if err != nil {
		return r, err
	}
	present := map[string]bool{}
	for _, t := range dirs {
		present[filepath.Base(t.Dir)] = true
		removeTemporaries(t.Dir) // a restore killed before its rename
		saved, data, ok := b.copyOf(t.Dir)
		if t.Damage == nil && ok && saved.userPIN && !t.userPIN {
			t.Damage = fmt.Errorf("%w: token.object lacks the user PIN its copy has", ErrTokenDamaged)
		}
		switch {
		case t.Damage != nil && ok && (t.Serial == "" || saved.serial == t.Serial):
			if err := restoreTokenObject(t.Dir, data); err != nil {
				return r, fmt.Errorf("keystore: restoring token %q (directory %s): %w", saved.label, t.Dir, err)
			}
			t.Label, t.Serial = saved.label, saved.serial
			r.Restored = append(r.Restored, t)
		case t.Damage != nil:
			r.Unrepaired = append(r.Unrepaired, t)
		case slices.ContainsFunc(tokens, t.Matches):
			_, cur, err := readTokenObject(t.Dir)
			if err != nil {
				return r, err
			}
			if err := writeFileSync(b.copyPath(t.Dir), cur); err != nil {
				return r, err
			}
		}
	}
	removeTemporaries(b.dir)
	copies, err := os.ReadDir(b.dir)
	if err != nil {
		return r, err
	}
	for _, c := range copies {
		name, ok := strings.CutSuffix(c.Name(), ".token.object")
		if !ok || present[name] {
			continue
		}
		dir := filepath.Join(b.store.TokenDir, name)
		if saved, _, ok := b.copyOf(dir); ok {
			r.Vanished = append(r.Vanished, SoftHSMToken{Dir: dir, Serial: saved.serial, Label: saved.label,
				Damage: fmt.Errorf("%w: the token's directory is gone", ErrTokenDamaged)})
		}
	}
	return r, nil
}

// Find reports what hsmkms knows of the SoftHSM2 token cfg selects (and,
// if serial is not empty, of the token with that recorded serial) although
// the module does not offer it: its directory, damaged or gone, from the
// store and the copies. ok is false when nothing is known.
func (b *TokenBackups) Find(cfg hsm.TokenConfig, serial string) (SoftHSMToken, bool) {
	if b == nil {
		return SoftHSMToken{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	dirs, _ := b.store.Tokens()
	for _, t := range dirs {
		if saved, _, ok := b.copyOf(t.Dir); ok && t.Label == "" {
			t.Label = saved.label
		}
		if t.Matches(cfg) || (serial != "" && t.Serial == serial) {
			return t, true
		}
	}
	copies, _ := os.ReadDir(b.dir)
	for _, c := range copies {
		name, ok := strings.CutSuffix(c.Name(), ".token.object")
		if !ok {
			continue
		}
		dir := filepath.Join(b.store.TokenDir, name)
		saved, _, ok := b.copyOf(dir)
		t := SoftHSMToken{Dir: dir, Serial: saved.serial, Label: saved.label,
			Damage: fmt.Errorf("%w: the token's directory is gone", ErrTokenDamaged)}
		if ok && (t.Matches(cfg) || (serial != "" && t.Serial == serial)) {
			return t, true
		}
	}
	return SoftHSMToken{}, false
}

// restoreTokenObject replaces dir's token.object with data atomically: a
// crash leaves the damaged file or the restored one. The temporary file's
// name does not end in .object, so SoftHSM2 never takes it for an object.
func restoreTokenObject(dir string, data []byte) error {
	return writeFileSync(filepath.Join(dir, "token.object"), data)
}

// removeTemporaries removes what writeFileSync leaves in dir when killed
// before its rename.
func removeTemporaries(dir string) {
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*"+tmpMark+"*"))
	for _, f := range tmps {
		os.Remove(f)
	}
}

const tmpMark = ".hsmkms-tmp-"

// writeFileSync writes data to path through a temporary file in the same
// directory (mode 0600), fsyncs it, renames it over path and fsyncs the
// directory, so the new content is durable once it returns.
func writeFileSync(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+tmpMark+"*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Describe is how messages name a SoftHSM2 token directory: its path and
// what is wrong with it.
func (t SoftHSMToken) Describe() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "directory %s", t.Dir)
	if t.Damage != nil {
		fmt.Fprintf(&b, " (%s)", strings.TrimPrefix(t.Damage.Error(), ErrTokenDamaged.Error()+": "))
	}
	return b.String()
}

// Log reports what Repair did: every restore, and every damaged token it
// could not restore, so no token disappears without a log line saying why.
func (r RepairReport) Log(log hclog.Logger) {
	for _, t := range r.Restored {
		log.Warn("restored a damaged SoftHSM2 token from hsmkms's copy of its token.object", "label", t.Label,
			"serial", t.Serial, "directory", t.Dir, "damage", t.Damage)
	}
	for _, t := range r.Unrepaired {
		log.Error("SoftHSM2 cannot load a token directory, and hsmkms holds no copy of its token.object", "directory", t.Dir,
			"serial", t.Serial, "damage", t.Damage)
	}
	for _, t := range r.Vanished {
		log.Error("the directory of a SoftHSM2 token hsmkms used is gone", "label", t.Label, "serial", t.Serial, "directory", t.Dir)
	}
}
