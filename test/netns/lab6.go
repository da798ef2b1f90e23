package netns

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPv6 in the lab. Documentation and unique-local ranges only, inside the
// lab's namespaces:
//
//	<lab>-ul   br0 also has 2001:db8:5::1/64 (Underlay6Bridge)
//	<lab>-hN   eth0 also has 2001:db8:5::(10+N)/64 and a default IPv6
//	           route via the bridge (AddHost6 with an IPv6 underlay);
//	           IPv6 forwarding on either way
//	<lab>-cN   the container: cbr0 takes FLANNEL_IPV6_SUBNET beside
//	           FLANNEL_SUBNET (as dockerd --fixed-cidr-v6 would), the
//	           container its ::2 and fresh addresses from ::a up
//
// Every IPv6 address the lab adds skips duplicate address detection: the
// addresses are the lab's own, and a tentative address is a second in
// which a first packet would be lost for a reason that is not vtepd's.

// The lab's IPv6 underlay.
var (
	Underlay6Net    = netip.MustParsePrefix("2001:db8:5::/64")
	Underlay6Bridge = netip.MustParseAddr("2001:db8:5::1")
)

// IP6 is the host's address on the IPv6 underlay (whether or not it has
// it: see AddHost6).
func (h *Host) IP6() netip.Addr {
	a := Underlay6Net.Addr().As16()
	a[15] = byte(10 + h.Index)
	return netip.AddrFrom16(a)
}

// AddHost6 adds a host as AddHost does, with IPv6 forwarding on (an IPv6
// overlay routes its containers' traffic) and, if v6Underlay, IP6 on its
// eth0 and a default IPv6 route via the underlay bridge, which gets its
// IPv6 address with the first such host. Without v6Underlay the host's
// eth0 has its link-local IPv6 address alone: an IPv6 overlay then rides
// the IPv4 underlay.
func (l *Lab) AddHost6(v6Underlay bool) (*Host, error) {
	h, err := l.AddHost()
	if err != nil {
		return nil, err
	}
	hc, err := l.conn(h.NS)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return hc.sysctl("net.ipv6.conf.all.forwarding", "1") },
		// Links made from now on (cbr0, the container's veth) skip DAD
		// on their link-local addresses too.
		func() error { return hc.sysctl("net.ipv6.conf.default.accept_dad", "0") },
	}
	if v6Underlay {
		steps = append(steps,
			l.underlay6,
			func() error {
				eth0, err := hc.link("eth0")
				if err != nil {
					return err
				}
				if err := hc.addAddrs6(eth0, netip.PrefixFrom(h.IP6(), Underlay6Net.Bits())); err != nil {
					return err
				}
				return hc.defaultRoute(eth0, Underlay6Bridge)
			})
	}
	if err := do(steps...); err != nil {
		return nil, fmt.Errorf("netns: host %s, IPv6: %w", h.Name, err)
	}
	return h, nil
}

// underlay6 gives the underlay bridge its IPv6 address, once.
func (l *Lab) underlay6() error {
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return err
	}
	br, err := ul.link("br0")
	if err != nil {
		return err
	}
	err = ul.addAddrs6(br, netip.PrefixFrom(Underlay6Bridge, Underlay6Net.Bits()))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// addAddrs6 puts IPv6 addresses on a link without duplicate address
// detection (IPv4 ones as addAddrs does).
func (c *nsConn) addAddrs6(link netlink.Link, addrs ...netip.Prefix) error {
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: ipNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := c.nl.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("netns: address %s on %s in %s: %w", a, link.Attrs().Name, c.name, err)
		}
	}
	return nil
}

// AddContainerDual is AddContainer for an overlay of either or both
// families: cbr0 takes FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, whichever
// the subnet file has, and the container the second address of each
// (.2, ::2) and extra fresh ones of each family (.10 up, ::a up). The host
// must have been added with AddHost6 when the overlay has IPv6.
func (h *Host) AddContainerDual(extra int) (*Container, error) { return h.addContainer(extra, true) }

// addContainer is AddContainer, and with ipv6 AddContainerDual.
func (h *Host) addContainer(extra int, ipv6 bool) (*Container, error) {
	env, err := h.Subnet()
	if err != nil {
		return nil, err
	}
	c := &Container{NS: fmt.Sprintf("%s-c%d", h.lab.Name, h.Index), Host: h}
	var bridge, addrs []netip.Prefix
	var gws []netip.Addr
	for _, s := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if !s.IsValid() || s.Addr().Is6() && !ipv6 {
			continue
		}
		base := s.Masked().Addr()
		at := func(n int) netip.Addr {
			a := base
			for range n {
				a = a.Next()
			}
			return a
		}
		if s.Addr().Is4() && 10+extra > 1<<(32-s.Bits())-1 {
			return nil, fmt.Errorf("netns: %d extra addresses do not fit in %s", extra, s)
		}
		var extras []netip.Addr
		for n := range extra {
			extras = append(extras, at(10+n))
		}
		if s.Addr().Is4() {
			c.Addr, c.Extra = at(2), extras
		} else {
			c.Addr6, c.Extra6 = at(2), extras
		}
		bridge = append(bridge, s)
		gws = append(gws, s.Addr())
		addrs = append(addrs, netip.PrefixFrom(at(2), s.Bits()))
		for _, a := range extras {
			addrs = append(addrs, netip.PrefixFrom(a, s.Bits()))
		}
	}
	if len(bridge) == 0 {
		return nil, fmt.Errorf("netns: %s has no subnet of either family", h.SubnetFile)
	}
	cc, err := h.lab.addNamespace(c.NS)
	if err != nil {
		return nil, err
	}
	if err := cc.sysctl("net.ipv6.conf.default.accept_dad", "0"); err != nil {
		return nil, err
	}
	hc, err := h.lab.conn(h.NS)
	if err != nil {
		return nil, err
	}
	if err := hc.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0", MTU: env.MTU}}); err != nil {
		return nil, fmt.Errorf("netns: bridge cbr0 on %s: %w", h.Name, err)
	}
	br, err := hc.link("cbr0")
	if err != nil {
		return nil, err
	}
	if err := do(
		func() error { return hc.addAddrs6(br, bridge...) },
		func() error { return hc.up(br) },
	); err != nil {
		return nil, err
	}
	port, eth0, err := veth(hc, "veth-c", cc, "eth0", env.MTU)
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return hc.nl.LinkSetMaster(port, br) },
		func() error { return hc.up(port) },
		func() error { return cc.addAddrs6(eth0, addrs...) },
		func() error { return cc.up(eth0) },
	}
	for _, gw := range gws {
		steps = append(steps, func() error { return cc.defaultRoute(eth0, gw) })
	}
	steps = append(steps,
		func() error { return hc.waitOperUp("cbr0", "veth-c") },
		func() error { return cc.waitOperUp("eth0") })
	if err := do(steps...); err != nil {
		return nil, fmt.Errorf("netns: container on %s: %w", h.Name, err)
	}
	h.Container = c
	return c, nil
}

// Kernel6 is Kernel for an IPv6 device (flannel-v6.<VNI>): its IPv6
// neighbour entries, its FDB entries (their destinations IPv4 or IPv6, the
// underlay's family) and the IPv6 routes through it, the kernel's own
// (fe80::/64) left out.
func (h *Host) Kernel6(device string) (Kernel, error) { return h.kernelOf(device, true) }

// AddIPv6 gives a container made before its overlay had IPv6 (AddContainer
// or AddContainerDual on an IPv4-only subnet file) what AddContainerDual
// would have: FLANNEL_IPV6_SUBNET on cbr0, the subnet's ::2 on the
// container, and a default IPv6 route via cbr0.
func (c *Container) AddIPv6() error {
	env, err := c.Host.Subnet()
	if err != nil {
		return err
	}
	if !env.IPv6Subnet.IsValid() {
		return fmt.Errorf("netns: %s has no FLANNEL_IPV6_SUBNET", c.Host.SubnetFile)
	}
	hc, err := c.Host.lab.conn(c.Host.NS)
	if err != nil {
		return err
	}
	cc, err := c.Host.lab.conn(c.NS)
	if err != nil {
		return err
	}
	br, err := hc.link("cbr0")
	if err != nil {
		return err
	}
	eth0, err := cc.link("eth0")
	if err != nil {
		return err
	}
	gw := env.IPv6Subnet.Addr()
	c.Addr6 = gw.Next()
	return do(
		func() error { return hc.addAddrs6(br, env.IPv6Subnet) },
		func() error { return cc.addAddrs6(eth0, netip.PrefixFrom(c.Addr6, env.IPv6Subnet.Bits())) },
		func() error { return cc.defaultRoute(eth0, gw) },
	)
}
