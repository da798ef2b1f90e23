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
// under <prefix>/subnets/<subnet key>.
type Lease struct {
	// Key is the etcd key the lease was read from.
	Key string
	// Subnet is the host's part of the overlay, e.g. 10.5.48.0/24.
	Subnet netip.Prefix
	// PublicIP is the underlay address VXLAN packets for Subnet go to.
	PublicIP netip.Addr
	// VtepMAC is the MAC address of the host's VXLAN device.
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
	// VNI is the VNI the host publishes in its BackendData.
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

// Gateway is the subnet's first address, the one flannel and vtepd put on the
// host's VXLAN device (10.5.48.0 for 10.5.48.0/24).
func (l Lease) Gateway() netip.Addr { return l.Subnet.Addr() }

// SameTarget reports whether l and o send packets to the same place: in
// each family, same subnet, VTEP MAC and public IP. Kernel entries made for
// one are right for the other.
func (l Lease) SameTarget(o Lease) bool {
	return l.Subnet == o.Subnet && l.VtepMAC == o.VtepMAC && l.PublicIP == o.PublicIP &&
		l.IPv6Subnet == o.IPv6Subnet && l.VtepMACv6 == o.VtepMACv6 && l.PublicIPv6 == o.PublicIPv6
}

func (p Part) String() string {
	return fmt.Sprintf("%s via %s (%s)", p.Subnet, p.PublicIP, p.VtepMAC)
}

func (l Lease) String() string {
	return fmt.Sprintf("%s via %s (%s)", l.Subnet, l.PublicIP, l.VtepMAC)
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

// SubnetKey is the last element of a lease's etcd key: "10.5.48.0-24".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseSubnetKey parses the last element of a lease key. A dual-stack
// flanneld writes "10.5.48.0-24&fd00:10::-64"; only the IPv4 part concerns
// vtepd.
func ParseSubnetKey(s string) (netip.Prefix, error) {
	v4, _, _ := strings.Cut(s, "&")
	addr, bits, ok := strings.Cut(v4, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("subnet key %q is not of the form 10.5.48.0-24", s)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not an IPv4 address", s, addr)
	}
	// Digits only, as flannel's \d+: Atoi would take "+24".
	n, err := strconv.ParseUint(bits, 10, 8)
	if err != nil || n < 1 || n > 32 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: %q is not a prefix length", s, bits)
	}
	p := netip.PrefixFrom(a, int(n))
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: host bits set, the subnet starts at %s", s, p.Masked().Addr())
	}
	return p, nil
}

// leaseValue is flannel's LeaseAttrs with the vxlan backend's data.
type leaseValue struct {
	PublicIP    string
	BackendType string
	BackendData json.RawMessage `json:",omitempty"`
}

type vxlanData struct {
	VNI     int
	VtepMAC string
}

// ErrNotVXLAN marks a lease of another flannel backend (udp, host-gw, ...).
// Such a lease is valid in flannel's world but cannot be reached over VXLAN.
var ErrNotVXLAN = errors.New("backend is not vxlan")

// ParseLease decodes the lease stored under key with the given value. The
// subnet comes from the key, the rest from the value; every field a VXLAN
// peer depends on is validated. The error says what is wrong with which
// field, but not the key: callers add that.
func ParseLease(subnetKey string, value []byte) (Lease, error) {
	var l Lease
	var err error
	if l.Subnet, err = ParseSubnetKey(subnetKey); err != nil {
		return Lease{}, err
	}
	var v leaseValue
	if err := json.Unmarshal(value, &v); err != nil {
		return Lease{}, fmt.Errorf("value is not flannel's lease JSON: %v", err)
	}
	if v.BackendType != "vxlan" {
		return Lease{}, fmt.Errorf("%w: BackendType %q", ErrNotVXLAN, v.BackendType)
	}
	if l.PublicIP, err = netip.ParseAddr(v.PublicIP); err != nil || !l.PublicIP.Is4() {
		return Lease{}, fmt.Errorf("PublicIP %q is not an IPv4 address", v.PublicIP)
	}
	if !isUnicast(l.PublicIP) {
		return Lease{}, fmt.Errorf("PublicIP %s is not a unicast address", l.PublicIP)
	}
	var d vxlanData
	if len(v.BackendData) == 0 {
		return Lease{}, errors.New("BackendData is missing")
	}
	if err := json.Unmarshal(v.BackendData, &d); err != nil {
		return Lease{}, fmt.Errorf("BackendData is not {\"VNI\":...,\"VtepMAC\":...}: %v", err)
	}
	if l.VtepMAC, err = ParseMAC(d.VtepMAC); err != nil {
		return Lease{}, fmt.Errorf("BackendData.VtepMAC: %v", err)
	}
	if !l.VtepMAC.IsUnicast() {
		return Lease{}, fmt.Errorf("BackendData.VtepMAC %s is not a unicast MAC", l.VtepMAC)
	}
	l.VNI = d.VNI
	return l, nil
}

// Value encodes l in flannel's lease format.
func (l Lease) Value() []byte {
	data, _ := json.Marshal(vxlanData{VNI: l.VNI, VtepMAC: l.VtepMAC.String()})
	b, _ := json.Marshal(leaseValue{PublicIP: l.PublicIP.String(), BackendType: "vxlan", BackendData: data})
	return b
}

// isUnicast reports whether a can be a VTEP's underlay address.
func isUnicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
