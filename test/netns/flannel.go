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
)

// FlannelHost is a host set up exactly as flanneld's vxlan backend (etcd v3
// mode) sets one up, without flanneld: a VXLAN device without miss flags,
// the lease in flannel's own JSON, and static entries for every other
// host's lease (a route via its first address, onlink; a permanent
// neighbour for that address; a permanent FDB entry), which Sync writes as
// flanneld does on every lease event. The interop tests run vtepd hosts
// beside it. AddFlannelHostWith adds the vxlan backend's MTU and
// DirectRouting, and Restart flanneld starting again on the host.
type FlannelHost struct {
	*Host
	Subnet netip.Prefix
	MAC    net.HardwareAddr
	// Network is the overlay's network, as the subnet file gives it.
	Network netip.Prefix
	// Options are the config's Backend options the host honours
	// (AddFlannelHostWith).
	Options FlannelOptions
}

// AddFlannelHost adds a flannel-style host holding subnet in network (its
// lease written with a 24 h etcd lease, as flanneld does) and gives it a
// subnet file, so that AddContainer works on it as on a vtepd host.
func (l *Lab) AddFlannelHost(ctx context.Context, network, subnet netip.Prefix) (*FlannelHost, error) {
	h, err := l.AddHost()
	if err != nil {
		return nil, err
	}
	f := &FlannelHost{Host: h, Subnet: subnet.Masked(), Network: network}
	// flannel: vxlan id 1, local public IP, dev of the public IP, dstport
	// 8472, nolearning; MTU = underlay - 50; the subnet's first address.
	hc, err := l.conn(h.NS)
	if err != nil {
		return nil, err
	}
	eth0, err := hc.link("eth0")
	if err != nil {
		return nil, err
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: 1450}, VxlanId: 1,
		SrcAddr: h.IP.AsSlice(), VtepDevIndex: eth0.Attrs().Index, Port: 8472, Learning: false}
	if err := hc.nl.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("netns: flannel.1 on %s: %w", h.Name, err)
	}
	dev, err := hc.link("flannel.1")
	if err != nil {
		return nil, err
	}
	err = do(
		func() error { return hc.up(dev) },
		func() error { return hc.addAddrs(dev, netip.PrefixFrom(f.Subnet.Addr(), 32)) },
	)
	if err != nil {
		return nil, err
	}
	link, err := h.Kernel("flannel.1")
	if err != nil {
		return nil, err
	}
	f.MAC = link.Device.Attrs().HardwareAddr
	c, err := l.EtcdClient()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	grant, err := c.Grant(ctx, int64((24 * time.Hour).Seconds()))
	if err != nil {
		return nil, fmt.Errorf("netns: flannel host lease: %w", err)
	}
	key := store.SubnetsPrefix("/coreos.com/network") + store.SubnetKey(f.Subnet)
	// Byte for byte what flanneld (v0.2x, vxlan, IPv4 only) writes.
	value := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, h.IP, f.MAC)
	resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(grant.ID))).Commit()
	if err != nil || !resp.Succeeded {
		return nil, fmt.Errorf("netns: flannel host lease %s: taken, or %v", key, err)
	}
	env := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
		network, netip.PrefixFrom(f.Subnet.Addr().Next(), f.Subnet.Bits()))
	if err := os.WriteFile(h.SubnetFile, []byte(env), 0o644); err != nil {
		return nil, err
	}
	return f, nil
}

// Sync writes the static entries flanneld would hold for every other lease
// in etcd now, and returns how many leases it wrote them for.
func (f *FlannelHost) Sync(ctx context.Context) (int, error) {
	hc, err := f.lab.conn(f.NS)
	if err != nil {
		return 0, err
	}
	dev, err := hc.link("flannel.1")
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
		subnet, err := store.ParseSubnetKey(strings.TrimPrefix(string(kv.Key), prefix))
		if err != nil {
			return n, fmt.Errorf("netns: flannel host reading %s: %w", kv.Key, err)
		}
		if subnet == f.Subnet {
			continue
		}
		// Read the value as flanneld does (its LeaseAttrs and vxlan
		// backend data), not with vtepd's own parser, so that a vtepd
		// lease flanneld could not read fails here.
		var attrs struct {
			PublicIP    string
			BackendType string
			BackendData struct {
				VNI     int
				VtepMAC string
			}
		}
		if err := json.Unmarshal(kv.Value, &attrs); err != nil {
			return n, fmt.Errorf("netns: flanneld would not read %s = %s: %w", kv.Key, kv.Value, err)
		}
		publicIP, err := netip.ParseAddr(attrs.PublicIP)
		mac, merr := net.ParseMAC(attrs.BackendData.VtepMAC)
		if err != nil || merr != nil || attrs.BackendType != "vxlan" || attrs.BackendData.VNI != 1 {
			return n, fmt.Errorf("netns: flanneld's vxlan backend would not use %s = %s", kv.Key, kv.Value)
		}
		if direct, err := f.syncDirect(hc, subnet, publicIP); direct || err != nil {
			if err != nil {
				return n, err
			}
			n++
			continue
		}
		if err := programFlannelPeer(hc, dev.Attrs().Index, subnet, publicIP, mac); err != nil {
			return n, fmt.Errorf("netns: flannel host %s: entries for %s: %w", f.Name, kv.Key, err)
		}
		n++
	}
	return n, nil
}
