package fabric

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Underlay is the interface VXLAN packets leave by.
type Underlay struct {
	Name  string
	Index int
	MTU   int
	// Addr is the interface's IPv4 address used as the VXLAN source;
	// invalid if it has none (an IPv6-only overlay's underlay may not).
	Addr netip.Addr
	// PublicIP is the address peers send to: Addr unless overridden for a
	// host behind NAT.
	PublicIP netip.Addr
	// Addr6 is the interface's IPv6 address, in flannel's order: global
	// before link-local, permanent (configured) before dynamic,
	// non-temporary before temporary, deprecated ones never; invalid if
	// it has none.
	Addr6 netip.Addr
	// PublicIPv6 is the IPv6 address peers send to: Addr6 unless
	// overridden (--public-ipv6). Whether a lease publishes it is the
	// overlay config's business (EnableIPv6).
	PublicIPv6 netip.Addr
	// Subnet and Subnet6 are the networks of Addr and Addr6 (e.g.
	// 198.51.100.0/24): the segment Reaches tests peers against.
	Subnet, Subnet6 netip.Prefix
}

// Reaches is flannel's DirectRouting test: whether peer, a peer's public IP,
// is on the same subnet as the chosen interface's address of peer's family,
// so that packets for the peer's overlay subnet can go to it directly,
// without VXLAN. A peer is never reached through its own address.
func (u Underlay) Reaches(peer netip.Addr) bool {
	peer = peer.Unmap()
	own, subnet := u.Addr, u.Subnet
	if peer.Is6() {
		own, subnet = u.Addr6, u.Subnet6
	}
	return peer.IsValid() && subnet.IsValid() && subnet.Contains(peer) && peer != own
}

// Stack is what the overlay carries, which decides the addresses the
// underlay interface must have to be chosen.
type Stack int

const (
	// IPv4Stack: an IPv4 overlay needs an IPv4 address (the default).
	IPv4Stack Stack = iota
	// DualStack: a dual-stack overlay needs an IPv4 and an IPv6 address
	// (flannel's IPv6 device runs over the IPv6 underlay).
	DualStack
	// IPv6Stack: an IPv6-only overlay needs an IPv6 address or, failing
	// that, an IPv4 one (vtepd's IPv6 device over an IPv4 underlay).
	IPv6Stack
)

func (s Stack) String() string {
	switch s {
	case DualStack:
		return "dual-stack"
	case IPv6Stack:
		return "IPv6-only"
	}
	return "IPv4-only"
}

// UnderlaySpec says how to choose the underlay, as flannel's flags do.
type UnderlaySpec struct {
	// Ifaces are interface names or addresses (IPv4 or IPv6), tried in
	// order; the first that exists wins.
	Ifaces []string
	// IfaceRegexes match interface names or addresses, tried in order after
	// Ifaces.
	IfaceRegexes []*regexp.Regexp
	// PublicIP, if valid, is published to peers instead of the interface
	// address.
	PublicIP netip.Addr
	// PublicIPv6, if valid, is published to peers instead of the
	// interface's IPv6 address (--public-ipv6).
	PublicIPv6 netip.Addr
	// Stack is what the overlay carries (the zero value: IPv4 only).
	Stack Stack
}

// findUnderlayWith picks the underlay interface: the first of spec.Ifaces
// that exists, else the first interface matching spec.IfaceRegexes, else
// the interface of the default route.
func findUnderlayWith(h *netlink.Handle, spec UnderlaySpec) (Underlay, error) {
	if spec.PublicIPv6.IsValid() && !spec.PublicIPv6.Is6() || spec.PublicIPv6.Is4In6() {
		return Underlay{}, fmt.Errorf("fabric: public IPv6 address %s is not an IPv6 address", spec.PublicIPv6)
	}
	u, err := findUnderlay(h, spec)
	if err != nil {
		return Underlay{}, err
	}
	u.PublicIP = u.Addr
	if spec.PublicIP.IsValid() {
		u.PublicIP = spec.PublicIP
	}
	u.PublicIPv6 = u.Addr6
	if spec.PublicIPv6.IsValid() {
		u.PublicIPv6 = spec.PublicIPv6
	}
	return u, nil
}

// candidate is an interface with its usable addresses: IPv4 ones in the
// kernel's order (the first is the one an interface chosen by name uses),
// IPv6 ones in flannel's.
type candidate struct {
	Underlay
	v4, v6 []netip.Prefix
}

// with returns the interface as an underlay using the addresses a4 and a6
// (either may be invalid).
func (c candidate) with(a4, a6 netip.Prefix) Underlay {
	u := c.Underlay
	if a4.IsValid() {
		u.Addr, u.Subnet = a4.Addr(), a4.Masked()
	}
	if a6.IsValid() {
		u.Addr6, u.Subnet6 = a6.Addr(), a6.Masked()
	}
	return u
}

// first returns the interface with its first address of each family.
func (c candidate) first() Underlay {
	var a4, a6 netip.Prefix
	if len(c.v4) > 0 {
		a4 = c.v4[0]
	}
	if len(c.v6) > 0 {
		a6 = c.v6[0]
	}
	return c.with(a4, a6)
}

// lacks says what the underlay u lacks for stack, or "".
func lacks(u Underlay, stack Stack) string {
	switch {
	case stack == IPv4Stack && !u.Addr.IsValid():
		return "no IPv4 address"
	case stack == DualStack && !u.Addr.IsValid() && !u.Addr6.IsValid():
		return "no IPv4 and no IPv6 address (a dual-stack overlay needs both)"
	case stack == DualStack && !u.Addr.IsValid():
		return "no IPv4 address (a dual-stack overlay needs both)"
	case stack == DualStack && !u.Addr6.IsValid():
		return "no IPv6 address (a dual-stack overlay needs both)"
	case stack == IPv6Stack && !u.Addr.IsValid() && !u.Addr6.IsValid():
		return "no IPv6 or IPv4 address"
	}
	return ""
}

// needs says what an interface must have for stack, for errors.
func needs(stack Stack) string {
	switch stack {
	case DualStack:
		return "an IPv4 and an IPv6 address"
	case IPv6Stack:
		return "an IPv6 or an IPv4 address"
	}
	return "one"
}

func findUnderlay(h *netlink.Handle, spec UnderlaySpec) (Underlay, error) {
	links, err := h.LinkList()
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list links: %w", err)
	}
	addrs, err := listRetrying(func() ([]netlink.Addr, error) { return h.AddrList(nil, unix.AF_INET) })
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list addresses: %w", err)
	}
	addrs6, err := listRetrying(func() ([]netlink.Addr, error) { return h.AddrList(nil, unix.AF_INET6) })
	if err != nil {
		return Underlay{}, fmt.Errorf("fabric: list IPv6 addresses: %w", err)
	}
	candidates := make([]candidate, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		c := candidate{Underlay: Underlay{Name: a.Name, Index: a.Index, MTU: a.MTU}}
		for _, ad := range addrs {
			if ad.LinkIndex != a.Index || ad.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			if p, ok := prefixOf(ad.IPNet); ok && p.Addr().Is4() {
				c.v4 = append(c.v4, p)
			}
		}
		c.v6 = ipv6Addrs(addrs6, a.Index)
		candidates = append(candidates, c)
	}
	// The families whose addresses --iface-regex is matched against, in
	// order.
	families := func(c candidate) []netip.Prefix {
		switch spec.Stack {
		case DualStack:
			return append(slices.Clip(c.v4), c.v6...)
		case IPv6Stack:
			return append(slices.Clip(c.v6), c.v4...)
		}
		return c.v4
	}
	// byAddr returns the first interface holding an address that match
	// accepts and having what the overlay needs, with that address as its
	// address of the family.
	byAddr := func(match func(a netip.Addr) bool) (Underlay, bool) {
		for _, c := range candidates {
			for _, p := range families(c) {
				if !match(p.Addr()) {
					continue
				}
				u := c.first()
				if p.Addr().Is4() {
					u.Addr, u.Subnet = p.Addr(), p.Masked()
				} else {
					u.Addr6, u.Subnet6 = p.Addr(), p.Masked()
				}
				if lacks(u, spec.Stack) == "" {
					return u, true
				}
			}
		}
		return Underlay{}, false
	}

	// As flannel's --iface and --iface-regex: each is tried in order, and
	// the first that names an interface with the addresses the overlay
	// needs wins; one that does not is skipped, and said in the error if
	// none wins.
	var tried []string
	for _, want := range spec.Ifaces {
		if ip, err := netip.ParseAddr(want); err == nil {
			ip = ip.Unmap()
			u, ok := Underlay{}, false
			for _, c := range candidates {
				for _, p := range append(slices.Clip(c.v4), c.v6...) {
					if p.Addr() == ip {
						u = c.first()
						if ip.Is4() {
							u.Addr, u.Subnet = ip, p.Masked()
						} else {
							u.Addr6, u.Subnet6 = ip, p.Masked()
						}
						ok = true
						break
					}
				}
				if ok {
					break
				}
			}
			switch {
			case !ok:
				tried = append(tried, fmt.Sprintf("%s (no interface has this address)", want))
			case lacks(u, spec.Stack) != "":
				tried = append(tried, fmt.Sprintf("%s (%s has %s)", want, u.Name, lacks(u, spec.Stack)))
			default:
				return u, nil
			}
			continue
		}
		i := slices.IndexFunc(candidates, func(c candidate) bool { return c.Name == want })
		if i < 0 {
			tried = append(tried, fmt.Sprintf("%s (no such interface)", want))
			continue
		}
		u := candidates[i].first()
		if why := lacks(u, spec.Stack); why != "" {
			tried = append(tried, fmt.Sprintf("%s (%s)", want, why))
			continue
		}
		return u, nil
	}
	for _, re := range spec.IfaceRegexes {
		// Addresses first, then names, as flannel matches them.
		if u, ok := byAddr(func(a netip.Addr) bool { return re.MatchString(a.String()) }); ok {
			return u, nil
		}
		for _, c := range candidates {
			if u := c.first(); re.MatchString(c.Name) && lacks(u, spec.Stack) == "" {
				return u, nil
			}
		}
		tried = append(tried, fmt.Sprintf("/%s/ (matches no address, nor the name of an interface with %s)", re, needs(spec.Stack)))
	}
	if len(tried) > 0 {
		return Underlay{}, fmt.Errorf("fabric: no underlay interface found; tried %s", strings.Join(tried, ", "))
	}
	return defaultRouteUnderlay(h, candidates, spec.Stack)
}

// defaultRouteUnderlay picks the interface of the default route: IPv4's
// (dual-stack: IPv4's, and IPv6's must be the same interface if there is
// one), or for an IPv6-only overlay IPv6's, failing that IPv4's.
func defaultRouteUnderlay(h *netlink.Handle, candidates []candidate, stack Stack) (Underlay, error) {
	defaultIface := func(family int) (candidate, bool, error) {
		routes, err := listRetrying(func() ([]netlink.Route, error) { return h.RouteList(nil, family) })
		if err != nil {
			return candidate{}, false, fmt.Errorf("fabric: list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !isDefault(r.Dst) {
				continue
			}
			for _, c := range candidates {
				if c.Index == r.LinkIndex {
					return c, true, nil
				}
			}
		}
		return candidate{}, false, nil
	}
	v4, ok4, err := defaultIface(unix.AF_INET)
	if err != nil {
		return Underlay{}, err
	}
	var v6 candidate
	ok6 := false
	if stack != IPv4Stack {
		if v6, ok6, err = defaultIface(unix.AF_INET6); err != nil {
			return Underlay{}, err
		}
	}
	var c candidate
	switch {
	case stack == IPv6Stack && ok6 && len(v6.v6) > 0:
		c = v6
	case ok4:
		c = v4
		if stack == DualStack && ok6 && v6.Index != v4.Index {
			return Underlay{}, fmt.Errorf("fabric: the IPv6 default route's interface %s is not the IPv4 one's, %s, and a dual-stack overlay runs over one interface; name it with --iface", v6.Name, v4.Name)
		}
	case ok6:
		c = v6
	default:
		return Underlay{}, errors.New("fabric: no default route to choose the underlay interface by; name it with --iface")
	}
	u := c.first()
	if why := lacks(u, stack); why != "" {
		return Underlay{}, fmt.Errorf("fabric: the default route's interface %s has %s; give it one, or name another with --iface", u.Name, why)
	}
	return u, nil
}

// ipv6Addrs returns the usable IPv6 addresses of the interface with the
// given index in flannel's order of preference (its compareAddrs and
// GetInterfaceIP6Addrs): global before link-local, permanent before
// dynamic, non-temporary before temporary; deprecated ones, and any not
// global or link-local unicast, left out. Ties keep the kernel's order.
func ipv6Addrs(addrs []netlink.Addr, index int) []netip.Prefix {
	var out []netlink.Addr
	for _, ad := range addrs {
		if ad.LinkIndex != index || ad.Flags&unix.IFA_F_DEPRECATED != 0 {
			continue
		}
		if ip := ad.IP; ip.To4() == nil && (ip.IsGlobalUnicast() || ip.IsLinkLocalUnicast()) {
			out = append(out, ad)
		}
	}
	rank := func(a netlink.Addr) [3]bool {
		return [3]bool{a.IP.IsLinkLocalUnicast(), a.Flags&unix.IFA_F_PERMANENT == 0, a.Flags&unix.IFA_F_TEMPORARY != 0}
	}
	slices.SortStableFunc(out, func(a, b netlink.Addr) int {
		ra, rb := rank(a), rank(b)
		for i := range ra {
			if c := cmp.Compare(b2i(ra[i]), b2i(rb[i])); c != 0 {
				return c
			}
		}
		return 0
	})
	ps := make([]netip.Prefix, 0, len(out))
	for _, ad := range out {
		if p, ok := prefixOf(ad.IPNet); ok {
			ps = append(ps, p)
		}
	}
	return ps
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
