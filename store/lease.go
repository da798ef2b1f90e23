package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Lease is one host's claim on a subnet of the overlay, as published in etcd
// under <prefix>/subnets/<lease key>. A lease has an IPv4 part, an IPv6
// part or both (a dual-stack host); IPv4 and IPv6 give each part on its
// own. The fields of a part the lease does not have are zero.
type Lease struct {
	// Key is the etcd key the lease was read from.
	Key string
	// Subnet is the host's IPv4 part of the overlay, e.g. 10.5.48.0/24;
	// invalid for an IPv6-only lease.
	Subnet netip.Prefix
	// PublicIP is the IPv4 underlay address VXLAN packets for Subnet go to.
	// An IPv6-only lease has one only when its IPv6 part rides an IPv4
	// underlay.
	PublicIP netip.Addr
	// VtepMAC is the MAC address of the host's IPv4 VXLAN device
	// (BackendData.VtepMAC).
	VtepMAC MAC
	// IPv6Subnet is the host's IPv6 part of the overlay, e.g.
	// fd00:10:0:30::/64; invalid when the key has no IPv6 part.
	IPv6Subnet netip.Prefix
	// PublicIPv6 is the IPv6 underlay address VXLAN packets for IPv6Subnet
	// go to; invalid when the value's PublicIPv6 is null.
	PublicIPv6 netip.Addr
	// VtepMACv6 is the MAC address of the host's IPv6 VXLAN device
	// (BackendV6Data.VtepMAC).
	VtepMACv6 MAC
	// VNI is the VNI the host publishes in its BackendData (or, for an
	// IPv6-only lease, its BackendV6Data).
	VNI int
	// CreateRevision and ModRevision are etcd's revisions of the key. The
	// earlier-created of two overlapping leases is the one that is believed.
	CreateRevision, ModRevision int64
	// EtcdLease is the etcd lease the key is bound to (0 for none).
	EtcdLease int64
}

// Part is one family's part of a lease: where packets for Subnet go.
type Part struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr // the underlay address
	VtepMAC  MAC
}

// Gateway is the part's first address, the one flannel and vtepd put on the
// host's VXLAN device (10.5.48.0 for 10.5.48.0/24, fd00:10:0:30:: for
// fd00:10:0:30::/64).
func (p Part) Gateway() netip.Addr { return p.Subnet.Addr() }

// IPv4 returns the lease's IPv4 part, and whether it has one.
func (l Lease) IPv4() (Part, bool) {
	return Part{Subnet: l.Subnet, PublicIP: l.PublicIP, VtepMAC: l.VtepMAC}, l.Subnet.IsValid()
}

// IPv6 returns the lease's IPv6 part, and whether it has one. Its underlay
// address is PublicIPv6, or PublicIP when PublicIPv6 is null: an IPv6
// overlay over an IPv4 underlay, which vtepd allows and flannel has not.
func (l Lease) IPv6() (Part, bool) {
	p := Part{Subnet: l.IPv6Subnet, PublicIP: l.PublicIPv6, VtepMAC: l.VtepMACv6}
	if !p.PublicIP.IsValid() {
		p.PublicIP = l.PublicIP
	}
	return p, l.IPv6Subnet.IsValid()
}

// Gateway is the IPv4 subnet's first address, the one flannel and vtepd put
// on the host's VXLAN device (10.5.48.0 for 10.5.48.0/24); invalid for an
// IPv6-only lease (see Part.Gateway).
func (l Lease) Gateway() netip.Addr { return l.Subnet.Addr() }

// SameTarget reports whether l and o send packets to the same place: in
// each family, same subnet, VTEP MAC and public IP. Kernel entries made for
// one are right for the other.
func (l Lease) SameTarget(o Lease) bool {
	return l.Subnet == o.Subnet && l.VtepMAC == o.VtepMAC && l.PublicIP == o.PublicIP &&
		l.IPv6Subnet == o.IPv6Subnet && l.VtepMACv6 == o.VtepMACv6 && l.PublicIPv6 == o.PublicIPv6
}

func (l Lease) String() string {
	p4, ok4 := l.IPv4()
	p6, ok6 := l.IPv6()
	switch {
	case ok4 && ok6:
		return p4.String() + ", " + p6.String()
	case ok6:
		return p6.String()
	default:
		return p4.String()
	}
}

func (p Part) String() string {
	return fmt.Sprintf("%s via %s (%s)", p.Subnet, p.PublicIP, p.VtepMAC)
}

// MAC is an Ethernet address. As an array it is comparable and usable as a
// map key without allocating.
type MAC [6]byte

// ParseMAC parses the colon-separated form flannel writes.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return MAC{}, fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return MAC(hw), nil
}

// IsUnicast reports whether m can be a VTEP's address: not zero, not
// multicast, not broadcast.
func (m MAC) IsUnicast() bool { return m != MAC{} && m[0]&1 == 0 }

// HardwareAddr returns m as a net.HardwareAddr, freshly allocated.
func (m MAC) HardwareAddr() net.HardwareAddr { return append(net.HardwareAddr(nil), m[:]...) }

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// SubnetKey is the last element of an IPv4-only lease's etcd key:
// "10.5.48.0-24". LeaseKey writes the keys of the other kinds of lease.
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// noIPv4Part is the IPv4 part of an IPv6-only lease's key: flannel writes
// its zero IPv4 subnet.
const noIPv4Part = "0.0.0.0-0"

// LeaseKey is the last element of a lease's etcd key, as flannel's
// MakeSubnetKey writes it: "10.5.48.0-24" for an IPv4-only lease,
// "10.5.48.0-24&fd00:10::-64" for a dual-stack one and
// "0.0.0.0-0&fd00:10::-64" for an IPv6-only one. An invalid v4 or v6 is a
// part the lease does not have; at least one must be valid. The IPv6
// address is written lowercase and compressed (RFC 5952), as flannel's
// net.IP.String does.
func LeaseKey(v4, v6 netip.Prefix) string {
	k := noIPv4Part
	if v4.IsValid() {
		k = SubnetKey(v4)
	}
	if v6.IsValid() {
		k += "&" + v6.Addr().String() + "-" + strconv.Itoa(v6.Bits())
	}
	return k
}

// ParseSubnetKey parses the last element of a lease key and returns its
// IPv4 subnet, for callers that know only IPv4. The key's IPv6 part, if it
// has one ("10.5.48.0-24&fd00:10::-64"), is checked as ParseLeaseKey checks
// it but not returned; a key with no IPv4 part (an IPv6-only lease,
// "0.0.0.0-0&fd00:10::-64") is an error saying so, never an invalid
// prefix.
func ParseSubnetKey(s string) (netip.Prefix, error) {
	v4, _, err := ParseLeaseKey(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !v4.IsValid() {
		return netip.Prefix{}, fmt.Errorf("subnet key %q has no IPv4 part: an IPv6-only lease", s)
	}
	return v4, nil
}

// ParseLeaseKey parses the last element of a lease key into its IPv4 and
// IPv6 subnets; a part the key does not have is the zero netip.Prefix
// (v4 for "0.0.0.0-0&fd00:10::-64", v6 for "10.5.48.0-24").
//
// It takes what flannel's ParseSubnetKey takes, with its regular
// expression's limits: lowercase hex digits and colons only in the IPv6
// address (no uppercase, no embedded IPv4, no zone), an IPv6 length of at
// most 127. It is stricter where flannel would accept a key no flanneld
// writes: the address must be in flannel's (and netip's) compressed form,
// not IPv4-mapped, and neither part may have host bits set. Every error
// quotes the key.
func ParseLeaseKey(s string) (v4, v6 netip.Prefix, err error) {
	v4s, v6s, dual := strings.Cut(s, "&")
	addr, bits, ok := strings.Cut(v4s, "-")
	if !ok {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q is not of the form 10.5.48.0-24", s)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an IPv4 address", s, addr)
	}
	// Digits only, as flannel's \d+: Atoi would take "+24".
	n, err := strconv.ParseUint(bits, 10, 8)
	if err != nil || n > 32 || n == 0 && (!dual || a != netip.IPv4Unspecified()) {
		// The only /0 is flannel's "no IPv4 part" before an IPv6 one.
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not a prefix length", s, bits)
	}
	if n > 0 {
		v4 = netip.PrefixFrom(a, int(n))
		if v4.Masked() != v4 {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: host bits set, the subnet starts at %s", s, v4.Masked().Addr())
		}
	}
	if !dual {
		return v4, netip.Prefix{}, nil
	}
	if v6, err = parseKeyIPv6(v6s); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: IPv6 part %q %v", s, v6s, err)
	}
	return v4, v6, nil
}

// parseKeyIPv6 parses the part of a lease key after "&", fd00:10::-64. The
// error completes "IPv6 part %q ...".
func parseKeyIPv6(s string) (netip.Prefix, error) {
	// flannel's ParseSubnetKey matches the part with ([a-f\d:]+)-(\d+)$.
	i := strings.LastIndexByte(s, '-')
	if i <= 0 || strings.Trim(s[:i], "0123456789abcdef:") != "" {
		return netip.Prefix{}, errors.New("is not of the form fd00:10::-64 (lowercase hex digits and colons, a dash, a length)")
	}
	addr, bits := s[:i], s[i+1:]
	a, err := netip.ParseAddr(addr)
	switch {
	case err != nil || !a.Is6():
		return netip.Prefix{}, fmt.Errorf("is not of the form fd00:10::-64: %q is not an IPv6 address", addr)
	case a.Is4In6():
		return netip.Prefix{}, fmt.Errorf("is an IPv4-mapped address, not an IPv6 subnet")
	case a.String() != addr:
		return netip.Prefix{}, fmt.Errorf("is not in flannel's form: the address is written %s", a)
	}
	// flannel parses the length with ParseUint(s, 10, 7): at most 127.
	n, err := strconv.ParseUint(bits, 10, 7)
	if err != nil || n == 0 {
		return netip.Prefix{}, fmt.Errorf("is not of the form fd00:10::-64: %q is not a prefix length (1 to 127)", bits)
	}
	p := netip.PrefixFrom(a, int(n))
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("has host bits set: the subnet starts at %s", p.Masked().Addr())
	}
	return p, nil
}

// leaseValue is flannel's LeaseAttrs with the vxlan backend's data, its
// fields in flannel's order: PublicIPv6 is written null when absent, the
// backend data of a part the lease does not have is left out.
type leaseValue struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

type vxlanData struct {
	VNI     int
	VtepMAC string
}

// vxlanV6Data is vxlanData as read from BackendV6Data, whose VNI may be
// absent (the IPv4 part's VNI then stands).
type vxlanV6Data struct {
	VNI     *int
	VtepMAC string
}

// ErrNotVXLAN marks a lease of another flannel backend (udp, host-gw, ...).
// Such a lease is valid in flannel's world but cannot be reached over VXLAN.
var ErrNotVXLAN = errors.New("backend is not vxlan")

// ParseLease decodes the lease stored under the lease key (the last element
// of its etcd key) with the given value. The subnets come from the key, the
// rest from the value; every field a VXLAN peer depends on is validated,
// each part on its own:
//   - a key with an IPv4 part needs PublicIP, an IPv4 unicast address, and
//     BackendData with a unicast VtepMAC;
//   - a key with an IPv6 part needs BackendV6Data with a unicast VtepMAC,
//     and a VTEP address: PublicIPv6 (an IPv6 unicast address), or failing
//     it (null) PublicIP;
//   - backend data or a PublicIPv6 for a part the key does not have is an
//     error: the key and the value disagree about what the host is.
//
// An IPv6-only lease's PublicIP "0.0.0.0" (what flannel writes for none)
// is no address. The error says what is wrong with which field, but not
// the key: callers add that.
func ParseLease(leaseKey string, value []byte) (Lease, error) {
	var l Lease
	var err error
	if l.Subnet, l.IPv6Subnet, err = ParseLeaseKey(leaseKey); err != nil {
		return Lease{}, err
	}
	var v leaseValue
	if err := json.Unmarshal(value, &v); err != nil {
		return Lease{}, fmt.Errorf("value is not flannel's lease JSON: %v", err)
	}
	if v.BackendType != "vxlan" {
		return Lease{}, fmt.Errorf("%w: BackendType %q", ErrNotVXLAN, v.BackendType)
	}
	if l.Subnet.IsValid() {
		if err := valueIPv4(&l, v); err != nil {
			return Lease{}, err
		}
	} else {
		if !isNull(v.BackendData) {
			return Lease{}, fmt.Errorf("BackendData given, but the key has no IPv4 part (an IPv4 value with an IPv6-only key)")
		}
		// The underlay of an IPv6 part over IPv4, or none.
		if v.PublicIP != "" && v.PublicIP != "0.0.0.0" {
			if l.PublicIP, err = parseUnicast4(v.PublicIP); err != nil {
				return Lease{}, err
			}
		}
	}
	if l.IPv6Subnet.IsValid() {
		if err := valueIPv6(&l, v); err != nil {
			return Lease{}, err
		}
	} else {
		switch {
		case !isNull(v.BackendV6Data):
			return Lease{}, errors.New("BackendV6Data given, but the key has no IPv6 part (an IPv6 value with an IPv4-only key)")
		case v.PublicIPv6 != nil:
			return Lease{}, fmt.Errorf("PublicIPv6 %q given, but the key has no IPv6 part (an IPv6 value with an IPv4-only key)", *v.PublicIPv6)
		}
	}
	return l, nil
}

// valueIPv4 fills in the IPv4 part of l from v.
func valueIPv4(l *Lease, v leaseValue) error {
	var err error
	if l.PublicIP, err = parseUnicast4(v.PublicIP); err != nil {
		return err
	}
	var d vxlanData
	if len(v.BackendData) == 0 {
		return errors.New("BackendData is missing")
	}
	if err := json.Unmarshal(v.BackendData, &d); err != nil {
		return fmt.Errorf("BackendData is not {\"VNI\":...,\"VtepMAC\":...}: %v", err)
	}
	if l.VtepMAC, err = ParseMAC(d.VtepMAC); err != nil {
		return fmt.Errorf("BackendData.VtepMAC: %v", err)
	}
	if !l.VtepMAC.IsUnicast() {
		return fmt.Errorf("BackendData.VtepMAC %s is not a unicast MAC", l.VtepMAC)
	}
	l.VNI = d.VNI
	return nil
}

// valueIPv6 fills in the IPv6 part of l from v, after the IPv4 part.
func valueIPv6(l *Lease, v leaseValue) error {
	if isNull(v.BackendV6Data) {
		return fmt.Errorf("BackendV6Data is missing, but the key has an IPv6 part %s (a v6 key with a v4 value)", l.IPv6Subnet)
	}
	var d vxlanV6Data
	if err := json.Unmarshal(v.BackendV6Data, &d); err != nil {
		return fmt.Errorf("BackendV6Data is not {\"VNI\":...,\"VtepMAC\":...}: %v", err)
	}
	var err error
	if l.VtepMACv6, err = ParseMAC(d.VtepMAC); err != nil {
		return fmt.Errorf("BackendV6Data.VtepMAC: %v", err)
	}
	if !l.VtepMACv6.IsUnicast() {
		return fmt.Errorf("BackendV6Data.VtepMAC %s is not a unicast MAC", l.VtepMACv6)
	}
	switch {
	case d.VNI == nil:
	case !l.Subnet.IsValid():
		l.VNI = *d.VNI
	case *d.VNI != l.VNI:
		return fmt.Errorf("BackendV6Data.VNI %d differs from BackendData.VNI %d", *d.VNI, l.VNI)
	}
	if v.PublicIPv6 == nil {
		if !l.PublicIP.IsValid() {
			return fmt.Errorf("PublicIPv6 is null and PublicIP %q is none: the IPv6 part %s has no VTEP address", v.PublicIP, l.IPv6Subnet)
		}
		return nil
	}
	a, err := netip.ParseAddr(*v.PublicIPv6)
	if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		return fmt.Errorf("PublicIPv6 %q is not an IPv6 address", *v.PublicIPv6)
	}
	if !isUnicast(a) {
		return fmt.Errorf("PublicIPv6 %s is not a unicast address", a)
	}
	l.PublicIPv6 = a
	return nil
}

// parseUnicast4 parses PublicIP.
func parseUnicast4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("PublicIP %q is not an IPv4 address", s)
	}
	if !isUnicast(a) {
		return netip.Addr{}, fmt.Errorf("PublicIP %s is not a unicast address", a)
	}
	return a, nil
}

// isNull reports whether a field of the value is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || strings.TrimSpace(string(raw)) == "null"
}

// Value encodes l in flannel's lease format, exactly as flanneld's vxlan
// backend writes it: PublicIP ("0.0.0.0" when there is none), PublicIPv6
// (null when l has no IPv6 part or no IPv6 underlay address), BackendType,
// then the backend data of each part l has.
func (l Lease) Value() []byte {
	v := leaseValue{PublicIP: "0.0.0.0", BackendType: "vxlan"}
	if l.PublicIP.IsValid() {
		v.PublicIP = l.PublicIP.String()
	}
	if l.Subnet.IsValid() {
		v.BackendData, _ = json.Marshal(vxlanData{VNI: l.VNI, VtepMAC: l.VtepMAC.String()})
	}
	if l.IPv6Subnet.IsValid() {
		v.BackendV6Data, _ = json.Marshal(vxlanData{VNI: l.VNI, VtepMAC: l.VtepMACv6.String()})
		if l.PublicIPv6.IsValid() {
			s := l.PublicIPv6.String()
			v.PublicIPv6 = &s
		}
	}
	b, _ := json.Marshal(v)
	return b
}

// isUnicast reports whether a can be a VTEP's underlay address.
func isUnicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
