package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults for the vxlan backend, as flannel applies them.
const (
	DefaultVNI  = 1
	DefaultPort = 8472 // the Linux kernel's and flannel's VXLAN port
)

// Config is the overlay network's configuration, stored by the operator at
// <prefix>/config in flannel's JSON format.
type Config struct {
	// Network is the whole overlay, e.g. 10.5.0.0/16.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's subnet, e.g. 24.
	SubnetLen int
	// SubnetMin and SubnetMax bound the subnets handed out to hosts, both
	// inclusive and both aligned to SubnetLen.
	SubnetMin, SubnetMax netip.Addr
	// Backend is the part of flannel's Backend object that vtepd uses.
	Backend Backend
}

// Backend is flannel's vxlan backend configuration.
type Backend struct {
	Type string
	VNI  int
	Port int
}

// ConfigError says which field of the network configuration is wrong.
type ConfigError struct {
	Key   string // the etcd key, e.g. /coreos.com/network/config
	Field string // the JSON field, e.g. SubnetLen or Backend.VNI; empty for the document as a whole
	Err   error
}

func (e *ConfigError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("store: network config %s: %v", e.Key, e.Err)
	}
	return fmt.Sprintf("store: network config %s: field %q: %v", e.Key, e.Field, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// ParseConfig decodes and validates the network configuration stored at key.
// It fills in flannel's defaults: SubnetLen 24 (or the network's length + 2
// for networks smaller than a /22), SubnetMin and SubnetMax one subnet inside
// either end of the network, VNI 1 and port 8472.
//
// Every error is a *ConfigError naming the key and the field.
func ParseConfig(key string, value []byte) (Config, error) {
	fail := func(field string, format string, args ...any) (Config, error) {
		return Config{}, &ConfigError{Key: key, Field: field, Err: fmt.Errorf(format, args...)}
	}

	// Decode each field on its own, so that a value of the wrong type names
	// its field instead of producing encoding/json's "cannot unmarshal
	// number into Go struct field".
	var doc configDoc
	if err := json.Unmarshal(value, &doc); err != nil {
		return fail("", "not a JSON object: %v", err)
	}

	var cfg Config
	var network string
	if err := decodeField(doc.Network, &network, true); err != nil {
		return fail("Network", "%v", err)
	}
	p, err := netip.ParsePrefix(network)
	if err != nil || !p.Addr().Is4() {
		return fail("Network", "%q is not an IPv4 prefix such as 10.5.0.0/16", network)
	}
	if p != p.Masked() {
		return fail("Network", "%q has host bits set; did you mean %s?", network, p.Masked())
	}
	cfg.Network = p

	if err := decodeField(doc.SubnetLen, &cfg.SubnetLen, false); err != nil {
		return fail("SubnetLen", "%v", err)
	}
	ones := p.Bits()
	switch {
	case cfg.SubnetLen == 0 && ones > 28:
		return fail("Network", "%s is too small: the smallest useful network is a /28", p)
	case cfg.SubnetLen == 0 && ones <= 22:
		cfg.SubnetLen = 24
	case cfg.SubnetLen == 0:
		cfg.SubnetLen = ones + 2
	case cfg.SubnetLen < 0 || cfg.SubnetLen > 30:
		// A host needs its device address (.0) and a bridge address (.1).
		return fail("SubnetLen", "%d is out of range: want at most 30", cfg.SubnetLen)
	case cfg.SubnetLen < ones+2:
		return fail("SubnetLen", "%d leaves room for fewer than four subnets in %s", cfg.SubnetLen, p)
	}

	size := uint32(1) << (32 - cfg.SubnetLen)
	first, last := u32(p.Addr()), u32(p.Addr())|^prefixMask(ones)
	// flannel skips the network's first subnet (a host holding 10.5.0.0
	// would put the network address on its device) but not its last.
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *netip.Addr
		def  uint32
	}{
		{"SubnetMin", doc.SubnetMin, &cfg.SubnetMin, first + size},
		{"SubnetMax", doc.SubnetMax, &cfg.SubnetMax, last + 1 - size},
	} {
		var s string
		if err := decodeField(f.raw, &s, false); err != nil {
			return fail(f.name, "%v", err)
		}
		if s == "" {
			*f.dst = addrFrom(f.def)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return fail(f.name, "%q is not an IPv4 address", s)
		}
		if !p.Contains(a) {
			return fail(f.name, "%s is not inside Network %s", a, p)
		}
		if u32(a)&(size-1) != 0 {
			return fail(f.name, "%s is not on a /%d boundary", a, cfg.SubnetLen)
		}
		*f.dst = a
	}
	if cfg.SubnetMax.Less(cfg.SubnetMin) {
		return fail("SubnetMax", "%s is below SubnetMin %s", cfg.SubnetMax, cfg.SubnetMin)
	}

	var backend backendDoc
	if err := decodeField(doc.Backend, &backend, true); err != nil {
		return fail("Backend", "%v (vtepd needs {\"Type\":\"vxlan\"})", err)
	}
	if err := decodeField(backend.Type, &cfg.Backend.Type, true); err != nil {
		return fail("Backend.Type", "%v", err)
	}
	if cfg.Backend.Type != "vxlan" {
		return fail("Backend.Type", "%q is not supported: vtepd speaks only vxlan", cfg.Backend.Type)
	}
	// flannel's default applies only when the field is absent: an explicit
	// 0 is VNI 0, which Linux accepts.
	if present, err := decodeFieldPresent(backend.VNI, &cfg.Backend.VNI, false); err != nil {
		return fail("Backend.VNI", "%v", err)
	} else if !present {
		cfg.Backend.VNI = DefaultVNI
	}
	if cfg.Backend.VNI < 0 || cfg.Backend.VNI >= 1<<24 {
		return fail("Backend.VNI", "%d is out of range: a VNI has 24 bits", cfg.Backend.VNI)
	}
	if err := decodeField(backend.Port, &cfg.Backend.Port, false); err != nil {
		return fail("Backend.Port", "%v", err)
	}
	if cfg.Backend.Port == 0 {
		cfg.Backend.Port = DefaultPort
	}
	if cfg.Backend.Port < 0 || cfg.Backend.Port > 65535 {
		return fail("Backend.Port", "%d is not a UDP port", cfg.Backend.Port)
	}
	return cfg, nil
}

// SubnetCount is the number of subnets between SubnetMin and SubnetMax.
func (c Config) SubnetCount() int {
	return int((u32(c.SubnetMax)-u32(c.SubnetMin))>>(32-c.SubnetLen)) + 1
}

// configDoc and backendDoc are the fields vtepd reads, each still JSON.
// encoding/json matches their names as it does for flanneld's structs:
// exactly or ignoring case, and of two keys for one field the last wins.
type configDoc struct {
	Network, SubnetLen, SubnetMin, SubnetMax, Backend json.RawMessage
}

type backendDoc struct {
	Type, VNI, Port json.RawMessage
}

// decodeField decodes raw, a field of the document, into dst. A missing
// field is an error only when required; JSON null counts as missing.
func decodeField(raw json.RawMessage, dst any, required bool) error {
	_, err := decodeFieldPresent(raw, dst, required)
	return err
}

// decodeFieldPresent is decodeField that also reports whether the field was
// there, for defaults that apply only to an absent field.
func decodeFieldPresent(raw json.RawMessage, dst any, required bool) (bool, error) {
	if len(raw) == 0 || strings.TrimSpace(string(raw)) == "null" {
		if required {
			return false, fmt.Errorf("missing")
		}
		return false, nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return true, fmt.Errorf("want %s, got %s", jsonKind(dst), raw)
	}
	return true, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case *string:
		return "a string"
	case *int:
		return "an integer"
	default:
		return "an object"
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrFrom(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func prefixMask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

// WaitConfig reads the network configuration at <prefix>/config. While the
// key is absent it waits, saying so once; while the value is invalid it logs
// the error (naming key and field) and waits for a fix rather than exiting,
// so a typo in etcd does not become a crash loop on every host. If waiting is
// not nil, it is told why each time the reason to wait changes.
func WaitConfig(ctx context.Context, c *clientv3.Client, prefix string, log *zap.Logger, waiting func(reason string)) (Config, error) {
	if waiting == nil {
		waiting = func(string) {}
	}
	key := ConfigKey(prefix)
	bo := newBackoff(100*time.Millisecond, 10*time.Second)
	var said string
	for {
		resp, err := c.Get(ctx, key)
		if err != nil {
			if ctx.Err() != nil {
				return Config{}, ctx.Err()
			}
			log.Warn("reading the network config failed; retrying", zap.String("key", key), zap.Error(err), zap.Duration("backoff", bo.peek()))
			waiting(fmt.Sprintf("reading the network config %s: %v", key, err))
			if !bo.wait(ctx) {
				return Config{}, ctx.Err()
			}
			continue
		}
		bo.reset()
		if len(resp.Kvs) == 0 {
			if said != "absent" {
				log.Info("waiting for the network config to be written to etcd", zap.String("key", key))
				waiting(fmt.Sprintf("waiting for the network config to be written to %s", key))
				said = "absent"
			}
		} else {
			cfg, err := ParseConfig(key, resp.Kvs[0].Value)
			if err == nil {
				return cfg, nil
			}
			log.Error("network config is invalid; waiting for it to be fixed", zap.Error(err))
			waiting(fmt.Sprintf("network config is invalid: %v", err))
			said = "invalid"
		}
		// Sleep until the key changes.
		wctx, cancel := context.WithCancel(ctx)
		wch := c.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1))
		var werr error
		select {
		case <-ctx.Done():
		case wr, ok := <-wch:
			if werr = wr.Err(); !ok && werr == nil {
				werr = errors.New("watch closed")
			}
		}
		cancel()
		if werr != nil && !bo.wait(ctx) || ctx.Err() != nil {
			return Config{}, ctx.Err()
		}
	}
}

// Diff lists the fields in which o differs from c, each as
// "Field old → new", in the order of the config's fields.
func (c Config) Diff(o Config) []string {
	var d []string
	field := func(name string, a, b any) {
		if a != b {
			d = append(d, fmt.Sprintf("%s %v → %v", name, a, b))
		}
	}
	field("Network", c.Network, o.Network)
	field("SubnetLen", c.SubnetLen, o.SubnetLen)
	field("SubnetMin", c.SubnetMin, o.SubnetMin)
	field("SubnetMax", c.SubnetMax, o.SubnetMax)
	field("Backend.Type", c.Backend.Type, o.Backend.Type)
	field("Backend.VNI", c.Backend.VNI, o.Backend.VNI)
	field("Backend.Port", c.Backend.Port, o.Backend.Port)
	return d
}

// ConfigChange is the network config in etcd no longer being the one vtepd
// runs with, or being it again.
type ConfigChange struct {
	Key string
	// Err says the config is gone or invalid; otherwise New is valid.
	Err error
	New Config
	// Differences are the fields in which New differs from the running
	// config (none: the running one again).
	Differences []string
	// NeedsRestart says that a field vtepd cannot change while it runs
	// differs; SubnetMin and SubnetMax only bound subnets acquired from
	// now on, and a host keeps the one it holds.
	NeedsRestart bool
}

// FollowConfig watches the network config at <prefix>/config until ctx is
// done and calls changed whenever it stops or starts again being running:
// changed to another valid config, to an invalid one, or deleted. vtepd
// keeps running with the config it started with; changed says what
// differs. etcd being away is waited out. It returns ctx.Err().
func FollowConfig(ctx context.Context, c *clientv3.Client, prefix string, running Config, changed func(ConfigChange)) error {
	key := ConfigKey(prefix)
	bo := newBackoff(100*time.Millisecond, 10*time.Second)
	var last string // what was reported last ("" = the running config)
	report := func(value []byte, deleted bool) {
		ch := ConfigChange{Key: key}
		switch {
		case deleted:
			ch.Err = errors.New("deleted")
		default:
			ch.New, ch.Err = ParseConfig(key, value)
		}
		if ch.Err == nil {
			ch.Differences = running.Diff(ch.New)
			for _, d := range ch.Differences {
				if !strings.HasPrefix(d, "SubnetMin ") && !strings.HasPrefix(d, "SubnetMax ") {
					ch.NeedsRestart = true
				}
			}
		}
		var now string
		if ch.Err != nil || len(ch.Differences) > 0 {
			now = fmt.Sprint(ch.Err, ch.Differences)
		}
		if now != last {
			last = now
			changed(ch)
		}
	}
	rev := int64(0)
	for ctx.Err() == nil {
		if rev == 0 {
			resp, err := c.Get(ctx, key)
			if err != nil {
				bo.wait(ctx)
				continue
			}
			rev = resp.Header.Revision
			if len(resp.Kvs) == 0 {
				report(nil, true)
			} else {
				report(resp.Kvs[0].Value, false)
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := c.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1))
		for wr := range wch {
			if wr.Err() != nil {
				if errors.Is(wr.Err(), rpctypes.ErrCompacted) {
					rev = 0 // read it afresh
				}
				break
			}
			bo.reset()
			for _, ev := range wr.Events {
				rev = ev.Kv.ModRevision
				report(ev.Kv.Value, ev.Type == mvccpb.DELETE)
			}
		}
		cancel()
		bo.wait(ctx)
	}
	return ctx.Err()
}
