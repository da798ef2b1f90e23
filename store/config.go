package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
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
//
// An overlay is IPv4-only (flannel's default), dual-stack or IPv6-only
// (EnableIPv4 false). The fields of a family the overlay does not have are
// zero; IPv4 and IPv6 say which families it has, by whether their network
// is valid, and ParseConfig keeps EnableIPv4 and EnableIPv6 in step with
// that.
type Config struct {
	// EnableIPv4 and EnableIPv6 are flannel's switches: IPv4 is on unless
	// the document says false, IPv6 off unless it says true.
	EnableIPv4, EnableIPv6 bool
	// Network is the whole overlay, e.g. 10.5.0.0/16.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's subnet, e.g. 24.
	SubnetLen int
	// SubnetMin and SubnetMax bound the subnets handed out to hosts, both
	// inclusive and both aligned to SubnetLen.
	SubnetMin, SubnetMax netip.Addr
	// IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are the
	// same for the overlay's IPv6 family, e.g. fd00:10::/48 of /64s.
	IPv6Network                  netip.Prefix
	IPv6SubnetLen                int
	IPv6SubnetMin, IPv6SubnetMax netip.Addr
	// Backend is flannel's vxlan backend configuration.
	Backend Backend
	// Warnings are what the document has that vtepd accepts but ignores:
	// fields of a family that is off, flannel's Windows-only backend fields,
	// backend fields flannel does not have. The agent logs them once.
	// Diff does not compare them.
	Warnings []string
}

// FamilyConfig is one family's part of a Config.
type FamilyConfig struct {
	Network              netip.Prefix
	SubnetLen            int
	SubnetMin, SubnetMax netip.Addr
}

// IPv4 returns the overlay's IPv4 family, and whether it has one.
func (c Config) IPv4() (FamilyConfig, bool) {
	return FamilyConfig{c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax}, c.Network.IsValid()
}

// IPv6 returns the overlay's IPv6 family, and whether it has one.
func (c Config) IPv6() (FamilyConfig, bool) {
	return FamilyConfig{c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax}, c.IPv6Network.IsValid()
}

// Backend is flannel's vxlan backend configuration (the Linux fields of its
// vxlan backend, all of them).
type Backend struct {
	Type string
	VNI  int
	Port int
	// MTU is the underlay interface's MTU to assume, as flannel's: the
	// VXLAN devices get it less the encapsulation's overhead. 0 means the
	// underlay interface's own MTU.
	MTU int
	// GBP turns on the devices' Group Based Policy extension.
	GBP bool
	// Learning lets the devices learn remote VTEPs from the packets they
	// receive (flannel's default is off, as vtepd's).
	Learning bool
	// DirectRouting reaches peers on the same subnet as the underlay
	// interface without VXLAN, by a route via their public IP.
	DirectRouting bool
}

// MTU bounds: the devices' MTU is Backend.MTU less the overhead (50 bytes
// over an IPv4 underlay, 70 over an IPv6 one), and IPv4 needs at least 68,
// IPv6 at least 1280 (RFC 791, RFC 8200). ParseConfig checks the bounds
// for the worst overhead; the agent checks the real one.
const (
	minMTU4   = 68 + 50
	minMTU6   = 1280 + 70
	maxMTU    = 65535
	maxSubLen = 30  // an IPv4 subnet needs its device address and a bridge address
	maxSub6   = 126 // the same for IPv6, flannel's limit
)

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

// fieldError is a *ConfigError before it knows its key.
type fieldError struct {
	field string
	err   error
}

func (e *fieldError) Error() string { return e.field + ": " + e.err.Error() }

func failf(field, format string, args ...any) error {
	return &fieldError{field, fmt.Errorf(format, args...)}
}

// ParseConfig decodes and validates the network configuration stored at key.
// It fills in flannel's defaults: IPv4 on and IPv6 off; SubnetLen 24 (or
// the network's length + 2 for networks smaller than a /22), IPv6SubnetLen
// 64 (or the IPv6 network's length + 2 for networks smaller than a /62);
// SubnetMin and SubnetMax (and their IPv6 twins) one subnet inside either
// end of the network; VNI 1 and port 8472.
//
// The fields of a family that is off are checked only for their JSON type,
// as flanneld decodes them, and ignored with a Warnings entry. So are
// Backend.MacPrefix and Backend.Name (flannel's Windows backend's) and any
// Backend field flannel's vxlan backend does not have.
//
// Every error is a *ConfigError naming the key and the field.
func ParseConfig(key string, value []byte) (Config, error) {
	cfg, err := parseConfig(value)
	if err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return Config{}, &ConfigError{Key: key, Field: fe.field, Err: fe.err}
		}
		return Config{}, &ConfigError{Key: key, Err: err}
	}
	return cfg, nil
}

func parseConfig(value []byte) (Config, error) {
	// Decode each field on its own, so that a value of the wrong type names
	// its field instead of producing encoding/json's "cannot unmarshal
	// number into Go struct field".
	var doc configDoc
	if err := json.Unmarshal(value, &doc); err != nil {
		return Config{}, fmt.Errorf("not a JSON object: %v", err)
	}
	cfg := Config{EnableIPv4: true}
	if err := decodeField(doc.EnableIPv4, &cfg.EnableIPv4, false); err != nil {
		return Config{}, failf("EnableIPv4", "%v", err)
	}
	if err := decodeField(doc.EnableIPv6, &cfg.EnableIPv6, false); err != nil {
		return Config{}, failf("EnableIPv6", "%v", err)
	}
	if !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		return Config{}, failf("EnableIPv4", "false, and EnableIPv6 is not true: the overlay would have no network")
	}

	ipv4 := []familyField{{"Network", doc.Network}, {"SubnetLen", doc.SubnetLen}, {"SubnetMin", doc.SubnetMin}, {"SubnetMax", doc.SubnetMax}}
	ipv6 := []familyField{{"IPv6Network", doc.IPv6Network}, {"IPv6SubnetLen", doc.IPv6SubnetLen},
		{"IPv6SubnetMin", doc.IPv6SubnetMin}, {"IPv6SubnetMax", doc.IPv6SubnetMax}}
	if cfg.EnableIPv4 {
		if err := parseIPv4(doc, &cfg); err != nil {
			return Config{}, err
		}
	} else if err := ignoreFamily(&cfg, "EnableIPv4", ipv4); err != nil {
		return Config{}, err
	}
	if cfg.EnableIPv6 {
		if err := parseIPv6(doc, &cfg); err != nil {
			return Config{}, err
		}
	} else if err := ignoreFamily(&cfg, "EnableIPv6", ipv6); err != nil {
		return Config{}, err
	}
	if err := parseBackend(doc.Backend, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// familyField is a field of one family, still JSON.
type familyField struct {
	name string
	raw  json.RawMessage
}

// ignoreFamily checks the fields of a family that is off for their JSON
// type (flanneld would not start with a wrong one) and warns about the
// ones given.
func ignoreFamily(cfg *Config, enable string, fields []familyField) error {
	var given []string
	for _, f := range fields {
		var dst any = new(string)
		if strings.HasSuffix(f.name, "SubnetLen") {
			dst = new(int)
		}
		if present, err := decodeFieldPresent(f.raw, dst, false); err != nil {
			return failf(f.name, "%v", err)
		} else if present {
			given = append(given, f.name)
		}
	}
	if len(given) > 0 {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("%s ignored: %s is false", strings.Join(given, ", "), enable))
	}
	return nil
}

// parseIPv4 reads the IPv4 family into cfg.
func parseIPv4(doc configDoc, cfg *Config) error {
	var network string
	if err := decodeField(doc.Network, &network, true); err != nil {
		return failf("Network", "%v", err)
	}
	p, err := netip.ParsePrefix(network)
	if err != nil || !p.Addr().Is4() {
		if err == nil && p.Addr().Is6() && !p.Addr().Is4In6() {
			return failf("Network", "%q is not an IPv4 prefix such as 10.5.0.0/16: an IPv6 network goes in IPv6Network, with EnableIPv6 true", network)
		}
		return failf("Network", "%q is not an IPv4 prefix such as 10.5.0.0/16", network)
	}
	if p != p.Masked() {
		return failf("Network", "%q has host bits set; did you mean %s?", network, p.Masked())
	}
	cfg.Network = p

	if err := decodeField(doc.SubnetLen, &cfg.SubnetLen, false); err != nil {
		return failf("SubnetLen", "%v", err)
	}
	if err := subnetLen(&cfg.SubnetLen, "", p, 24, maxSubLen); err != nil {
		return err
	}
	ones := p.Bits()

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
			return failf(f.name, "%v", err)
		}
		if s == "" {
			*f.dst = addrFrom(f.def)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return failf(f.name, "%q is not an IPv4 address", s)
		}
		if !p.Contains(a) {
			return failf(f.name, "%s is not inside Network %s", a, p)
		}
		if u32(a)&(size-1) != 0 {
			return failf(f.name, "%s is not on a /%d boundary", a, cfg.SubnetLen)
		}
		*f.dst = a
	}
	if cfg.SubnetMax.Less(cfg.SubnetMin) {
		return failf("SubnetMax", "%s is below SubnetMin %s", cfg.SubnetMax, cfg.SubnetMin)
	}
	return nil
}

// subnetLen applies flannel's default and checks to a family's subnet
// length *n (0 when not given) in network p; family is the fields' prefix
// ("" or "IPv6"). Both families follow one rule: the default is def for a
// network that holds four of them, else the network split in four; a
// subnet is at most maxLen long (room for the device's address and a
// bridge's), and the network must hold four.
func subnetLen(n *int, family string, p netip.Prefix, def, maxLen int) error {
	ones := p.Bits()
	name := strings.TrimSpace(family + " network")
	switch {
	case *n == 0 && ones > maxLen-2:
		return failf(family+"Network", "%s is too small: the smallest useful %s is a /%d", p, name, maxLen-2)
	case *n == 0 && ones <= def-2:
		*n = def
	case *n == 0:
		*n = ones + 2
	case *n < 0 || *n > maxLen:
		return failf(family+"SubnetLen", "%d is out of range: want at most %d", *n, maxLen)
	case *n < ones+2:
		return failf(family+"SubnetLen", "%d leaves room for fewer than four subnets in %s", *n, p)
	}
	return nil
}

// parseIPv6 reads the IPv6 family into cfg, with flannel's defaults and
// checks (pkg/subnet/config.go).
func parseIPv6(doc configDoc, cfg *Config) error {
	var network string
	if err := decodeField(doc.IPv6Network, &network, true); err != nil {
		return failf("IPv6Network", "%v", err)
	}
	p, err := netip.ParsePrefix(network)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
		return failf("IPv6Network", "%q is not an IPv6 prefix such as fd00:10::/48", network)
	}
	if p != p.Masked() {
		return failf("IPv6Network", "%q has host bits set; did you mean %s?", network, p.Masked())
	}
	cfg.IPv6Network = p

	if err := decodeField(doc.IPv6SubnetLen, &cfg.IPv6SubnetLen, false); err != nil {
		return failf("IPv6SubnetLen", "%v", err)
	}
	if err := subnetLen(&cfg.IPv6SubnetLen, "IPv6", p, 64, maxSub6); err != nil {
		return err
	}
	ones := p.Bits()

	size := one128Shl(128 - cfg.IPv6SubnetLen)
	base := u128Of(p.Addr())
	// As for IPv4, the first subnet is skipped and the last is not.
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *netip.Addr
		def  u128
	}{
		{"IPv6SubnetMin", doc.IPv6SubnetMin, &cfg.IPv6SubnetMin, base.add(size)},
		{"IPv6SubnetMax", doc.IPv6SubnetMax, &cfg.IPv6SubnetMax, base.add(one128Shl(128 - ones)).sub(size)},
	} {
		var s string
		if err := decodeField(f.raw, &s, false); err != nil {
			return failf(f.name, "%v", err)
		}
		a, err := netip.ParseAddr(s)
		// flannel takes :: as not given (ip.IsEmpty), like an absent field.
		if s == "" || err == nil && a == netip.IPv6Unspecified() {
			*f.dst = f.def.addr()
			continue
		}
		if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return failf(f.name, "%q is not an IPv6 address", s)
		}
		if !p.Contains(a) {
			return failf(f.name, "%s is not inside IPv6Network %s", a, p)
		}
		if u128Of(a).and(size.sub(u128{0, 1})) != (u128{}) {
			return failf(f.name, "%s is not on a /%d boundary", a, cfg.IPv6SubnetLen)
		}
		*f.dst = a
	}
	if cfg.IPv6SubnetMax.Less(cfg.IPv6SubnetMin) {
		return failf("IPv6SubnetMax", "%s is below IPv6SubnetMin %s", cfg.IPv6SubnetMax, cfg.IPv6SubnetMin)
	}
	return nil
}

// parseBackend reads flannel's vxlan backend configuration into cfg, after
// the families (the MTU's bound depends on them).
func parseBackend(raw json.RawMessage, cfg *Config) error {
	var backend backendDoc
	if err := decodeField(raw, &backend, true); err != nil {
		return failf("Backend", "%v (vtepd needs {\"Type\":\"vxlan\"})", err)
	}
	b := &cfg.Backend
	if err := decodeField(backend.Type, &b.Type, true); err != nil {
		return failf("Backend.Type", "%v", err)
	}
	if b.Type != "vxlan" {
		return failf("Backend.Type", "%q is not supported: vtepd speaks only vxlan", b.Type)
	}
	// flannel's default applies only when the field is absent: an explicit
	// 0 is VNI 0, which Linux accepts.
	if present, err := decodeFieldPresent(backend.VNI, &b.VNI, false); err != nil {
		return failf("Backend.VNI", "%v", err)
	} else if !present {
		b.VNI = DefaultVNI
	}
	if b.VNI < 0 || b.VNI >= 1<<24 {
		return failf("Backend.VNI", "%d is out of range: a VNI has 24 bits", b.VNI)
	}
	if err := decodeField(backend.Port, &b.Port, false); err != nil {
		return failf("Backend.Port", "%v", err)
	}
	if b.Port == 0 {
		b.Port = DefaultPort
	}
	if b.Port < 0 || b.Port > 65535 {
		return failf("Backend.Port", "%d is not a UDP port", b.Port)
	}
	if err := decodeField(backend.MTU, &b.MTU, false); err != nil {
		return failf("Backend.MTU", "%v", err)
	}
	min, why := minMTU4, "an IPv4 overlay's devices need 68 bytes and VXLAN takes 50"
	if cfg.EnableIPv6 {
		min, why = minMTU6, "an IPv6 overlay's devices need 1280 bytes and VXLAN over IPv6 takes 70"
	}
	if b.MTU != 0 && (b.MTU < min || b.MTU > maxMTU) {
		return failf("Backend.MTU", "%d is out of range: want 0 (the underlay interface's MTU) or %d to %d (%s)", b.MTU, min, maxMTU, why)
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *bool
	}{{"Backend.GBP", backend.GBP, &b.GBP}, {"Backend.Learning", backend.Learning, &b.Learning}, {"Backend.DirectRouting", backend.DirectRouting, &b.DirectRouting}} {
		if err := decodeField(f.raw, f.dst, false); err != nil {
			return failf(f.name, "%v", err)
		}
	}
	for _, name := range []struct {
		name string
		raw  json.RawMessage
	}{{"MacPrefix", backend.MacPrefix}, {"Name", backend.Name}} {
		if len(name.raw) > 0 {
			cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("Backend.%s ignored: it is a field of flannel's Windows vxlan backend", name.name))
		}
	}
	unknown, err := unknownFields(raw, backendDoc{})
	if err != nil {
		return failf("Backend", "%v", err)
	}
	for _, name := range unknown {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf("Backend.%s ignored: not a field of flannel's vxlan backend; check the spelling", name))
	}
	return nil
}

// unknownFields lists the names in the JSON object raw that encoding/json
// would match to no field of the struct known (of json.RawMessage fields),
// in the order of the object. The names are matched by encoding/json
// itself, so exactly as flanneld's struct matches them: exactly, or
// ignoring case.
func unknownFields[T any](raw json.RawMessage, known T) ([]string, error) {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	var order []string
	if _, err := dec.Token(); err != nil { // {
		return nil, err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
		name := tok.(string)
		probe, _ := json.Marshal(map[string]int{name: 1})
		k := known
		if err := json.Unmarshal(probe, &k); err != nil {
			return nil, err
		}
		if reflect.DeepEqual(k, known) && !slices.Contains(order, name) {
			order = append(order, name)
		}
	}
	return order, nil
}

// SubnetCount is the number of IPv4 subnets between SubnetMin and
// SubnetMax; 0 for an overlay without IPv4.
func (c Config) SubnetCount() int {
	if !c.SubnetMin.Is4() || !c.SubnetMax.Is4() {
		return 0
	}
	return int((u32(c.SubnetMax)-u32(c.SubnetMin))>>(32-c.SubnetLen)) + 1
}

// ipv6SubnetCount is the number of IPv6 subnets between IPv6SubnetMin and
// IPv6SubnetMax, as a 128-bit number (it may not fit 64 bits: fd00::/8 of
// /126s).
func (c Config) ipv6SubnetCount() u128 {
	return u128Of(c.IPv6SubnetMax).sub(u128Of(c.IPv6SubnetMin)).shr(uint(128 - c.IPv6SubnetLen)).add(u128{0, 1})
}

// configDoc and backendDoc are the fields vtepd reads, each still JSON.
// encoding/json matches their names as it does for flanneld's structs:
// exactly or ignoring case, and of two keys for one field the last wins.
type configDoc struct {
	EnableIPv4, EnableIPv6                                            json.RawMessage
	Network, SubnetLen, SubnetMin, SubnetMax                          json.RawMessage
	IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax, Backend json.RawMessage
}

// backendDoc has every field of flannel's vxlan backend on Linux, and the
// two of its Windows one.
type backendDoc struct {
	Type, VNI, Port, MTU, GBP, Learning, DirectRouting json.RawMessage
	MacPrefix, Name                                    json.RawMessage
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
	case *bool:
		return "true or false"
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
// "Field old → new", in the order of the config's fields. Warnings are not
// fields of the config and are not compared.
func (c Config) Diff(o Config) []string {
	var d []string
	show := func(v any) any {
		if n, ok := v.(interface{ IsValid() bool }); ok && !n.IsValid() {
			return "none" // a family that is off
		}
		return v
	}
	field := func(name string, a, b any) {
		if a != b {
			d = append(d, fmt.Sprintf("%s %v → %v", name, show(a), show(b)))
		}
	}
	field("EnableIPv4", c.EnableIPv4, o.EnableIPv4)
	field("EnableIPv6", c.EnableIPv6, o.EnableIPv6)
	field("Network", c.Network, o.Network)
	field("SubnetLen", c.SubnetLen, o.SubnetLen)
	field("SubnetMin", c.SubnetMin, o.SubnetMin)
	field("SubnetMax", c.SubnetMax, o.SubnetMax)
	field("IPv6Network", c.IPv6Network, o.IPv6Network)
	field("IPv6SubnetLen", c.IPv6SubnetLen, o.IPv6SubnetLen)
	field("IPv6SubnetMin", c.IPv6SubnetMin, o.IPv6SubnetMin)
	field("IPv6SubnetMax", c.IPv6SubnetMax, o.IPv6SubnetMax)
	field("Backend.Type", c.Backend.Type, o.Backend.Type)
	field("Backend.VNI", c.Backend.VNI, o.Backend.VNI)
	field("Backend.Port", c.Backend.Port, o.Backend.Port)
	field("Backend.MTU", c.Backend.MTU, o.Backend.MTU)
	field("Backend.GBP", c.Backend.GBP, o.Backend.GBP)
	field("Backend.Learning", c.Backend.Learning, o.Backend.Learning)
	field("Backend.DirectRouting", c.Backend.DirectRouting, o.Backend.DirectRouting)
	return d
}

// boundsOnly are the fields that only bound the subnets acquired from now
// on: a host keeps the one it holds when they change.
var boundsOnly = []string{"SubnetMin ", "SubnetMax ", "IPv6SubnetMin ", "IPv6SubnetMax "}

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
	// differs; SubnetMin and SubnetMax (and their IPv6 twins) only bound
	// subnets acquired from now on, and a host keeps the one it holds.
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
				if !slices.ContainsFunc(boundsOnly, func(f string) bool { return strings.HasPrefix(d, f) }) {
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
