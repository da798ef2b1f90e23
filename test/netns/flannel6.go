package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// FlannelHost6 is a FlannelHost of a dual-stack overlay, set up as
// flanneld's vxlan backend (etcd v3 mode, EnableIPv6) sets one up, without
// flanneld: its two devices, flannel.1 over the host's IPv4 address and
// flannel-v6.1 over its IPv6 one, each with a MAC of its own and without
// miss flags; one lease under the key v4&v6, in flannel's JSON with
// PublicIPv6 and BackendV6Data (the v6 device's MAC); and, written by Sync
// as flanneld writes them on every lease event, static entries for every
// other lease: for its IPv4 part those of FlannelHost.Sync, for its IPv6
// part a route via the IPv6 subnet's first address (onlink) on
// flannel-v6.1, a PERMANENT neighbour for that address resolving to
// BackendV6Data's VtepMAC, and a PERMANENT FDB entry sending that MAC to
// PublicIPv6.
//
// Where it differs from flanneld: the IPv6 device's address is added
// without duplicate address detection, as every lab address is (flanneld
// leaves DAD on, which holds the address tentative for a second; nothing
// here sends from it).
type FlannelHost6 struct {
	*FlannelHost
	IPv6Subnet netip.Prefix
	MACv6      net.HardwareAddr
}

// flannelMTU is what flanneld gives both devices over a 1500-byte
// underlay: 1500 - 50, for IPv6 too (flannel's overhead is IPv4's).
const flannelMTU = 1450

// AddFlannelHost6 adds a flannel-style dual-stack host holding subnet in
// network and subnet6 in network6 (one lease, written with a 24 h etcd
// lease as flanneld does), on an IPv6 underlay (AddHost6), with a subnet
// file of both families, so that AddContainerDual works on it.
func (l *Lab) AddFlannelHost6(ctx context.Context, network, subnet, network6, subnet6 netip.Prefix) (*FlannelHost6, error) {
	h, err := l.AddHost6(true)
	if err != nil {
		return nil, err
	}
	f := &FlannelHost6{FlannelHost: &FlannelHost{Host: h, Subnet: subnet.Masked()}, IPv6Subnet: subnet6.Masked()}
	if f.MAC, err = l.flannelDevice(h, "flannel.1", h.IP, netip.PrefixFrom(f.Subnet.Addr(), 32)); err != nil {
		return nil, err
	}
	if f.MACv6, err = l.flannelDevice(h, "flannel-v6.1", h.IP6(), netip.PrefixFrom(f.IPv6Subnet.Addr(), 128)); err != nil {
		return nil, err
	}
	// flanneld sets accept_ra=0 on its IPv6 device, and nothing else.
	if err := h.Sysctl("net/ipv6/conf/flannel-v6.1/accept_ra", "0"); err != nil {
		return nil, err
	}
	c, err := l.EtcdClient()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	grant, err := c.Grant(ctx, int64((24 * time.Hour).Seconds()))
	if err != nil {
		return nil, fmt.Errorf("netns: flannel host lease: %w", err)
	}
	key := store.SubnetsPrefix("/coreos.com/network") + store.LeaseKey(f.Subnet, f.IPv6Subnet)
	// Byte for byte what flanneld (vxlan, EnableIPv6) writes.
	value := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
		h.IP, h.IP6(), f.MAC, f.MACv6)
	resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(grant.ID))).Commit()
	if err != nil || !resp.Succeeded {
		return nil, fmt.Errorf("netns: flannel host lease %s: taken, or %v", key, err)
	}
	env := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n",
		network, netip.PrefixFrom(f.Subnet.Addr().Next(), f.Subnet.Bits()),
		network6, netip.PrefixFrom(f.IPv6Subnet.Addr().Next(), f.IPv6Subnet.Bits()), flannelMTU)
	if err := os.WriteFile(h.SubnetFile, []byte(env), 0o644); err != nil {
		return nil, err
	}
	return f, nil
}

// flannelDevice makes a VXLAN device as flanneld does (VNI 1, local
// address on eth0, port 8472, nolearning, no miss flags, flannelMTU), up,
// with addr, and returns the MAC the kernel gave it.
func (l *Lab) flannelDevice(h *Host, name string, local netip.Addr, addr netip.Prefix) (net.HardwareAddr, error) {
	hc, err := l.conn(h.NS)
	if err != nil {
		return nil, err
	}
	eth0, err := hc.link("eth0")
	if err != nil {
		return nil, err
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: flannelMTU}, VxlanId: 1,
		SrcAddr: local.AsSlice(), VtepDevIndex: eth0.Attrs().Index, Port: 8472, Learning: false}
	if err := hc.nl.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("netns: %s on %s: %w", name, h.Name, err)
	}
	dev, err := hc.link(name)
	if err != nil {
		return nil, err
	}
	if err := do(
		func() error { return hc.up(dev) },
		func() error { return hc.addAddrs6(dev, addr) },
	); err != nil {
		return nil, err
	}
	return dev.Attrs().HardwareAddr, nil
}

// Sync writes the static entries flanneld would hold for every other lease
// in etcd now, both families, and returns how many leases it wrote IPv6
// entries for. An IPv4 part flanneld could not read fails it, and so does
// an IPv6 part.
func (f *FlannelHost6) Sync(ctx context.Context) (int, error) {
	if _, err := f.FlannelHost.Sync(ctx); err != nil {
		return 0, err
	}
	hc, err := f.lab.conn(f.NS)
	if err != nil {
		return 0, err
	}
	dev, err := hc.link("flannel-v6.1")
	if err != nil {
		return 0, err
	}
	c, err := f.lab.EtcdClient()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	prefix := store.SubnetsPrefix("/coreos.com/network")
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range resp.Kvs {
		_, subnet6, err := store.ParseLeaseKey(strings.TrimPrefix(string(kv.Key), prefix))
		if err != nil {
			return n, fmt.Errorf("netns: flannel host reading %s: %w", kv.Key, err)
		}
		if !subnet6.IsValid() || subnet6 == f.IPv6Subnet {
			continue // flanneld: EnableIPv6 is whether the key has an IPv6 part
		}
		// As flanneld reads it: LeaseAttrs' PublicIPv6 (*ip.IP6) and the
		// vxlan backend's BackendV6Data.
		var attrs struct {
			PublicIPv6    *string
			BackendType   string
			BackendV6Data struct {
				VNI     int
				VtepMAC string
			}
		}
		if err := json.Unmarshal(kv.Value, &attrs); err != nil {
			return n, fmt.Errorf("netns: flanneld would not read %s = %s: %w", kv.Key, kv.Value, err)
		}
		if attrs.PublicIPv6 == nil {
			return n, fmt.Errorf("netns: flanneld would dereference a nil PublicIPv6 in %s = %s", kv.Key, kv.Value)
		}
		publicIP, err := netip.ParseAddr(*attrs.PublicIPv6)
		mac, merr := net.ParseMAC(attrs.BackendV6Data.VtepMAC)
		if err != nil || merr != nil || !publicIP.Is6() || attrs.BackendType != "vxlan" || attrs.BackendV6Data.VNI != 1 {
			return n, fmt.Errorf("netns: flanneld's vxlan backend would not use %s = %s", kv.Key, kv.Value)
		}
		if err := programFlannelPeer(hc, dev.Attrs().Index, subnet6, publicIP, mac); err != nil {
			return n, fmt.Errorf("netns: flannel host %s: IPv6 entries for %s: %w", f.Name, kv.Key, err)
		}
		n++
	}
	return n, nil
}

// programFlannelPeer writes what flanneld's handleSubnetEvents writes for a
// peer's lease part on the device of its family, in its order: a
// PERMANENT neighbour for the subnet's first address resolving to the
// peer's VTEP MAC, a PERMANENT FDB entry sending that MAC to the peer's
// public IP, and, last, the route for the subnet via that first address,
// onlink. FlannelHost.Sync and FlannelHost6.Sync share it.
func programFlannelPeer(hc *nsConn, idx int, subnet netip.Prefix, publicIP netip.Addr, mac net.HardwareAddr) error {
	gw := subnet.Addr()
	family := unix.AF_INET
	if gw.Is6() {
		family = unix.AF_INET6
	}
	return do(
		func() error {
			return hc.nl.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT,
				IP: gw.AsSlice(), HardwareAddr: mac})
		},
		func() error {
			return hc.nl.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
				State: netlink.NUD_PERMANENT, IP: publicIP.AsSlice(), HardwareAddr: mac})
		},
		func() error {
			return hc.nl.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: ipNet(subnet), Gw: gw.AsSlice(),
				Flags: int(netlink.FLAG_ONLINK)})
		},
	)
}
