// Command seedleases writes many valid flannel leases into etcd, for the
// lab's scale benchmarks: the lease table of tens of thousands of hosts
// without running them. It runs inside a lab namespace with `ip netns exec`
// and talks to the endpoints it is given and to no other. It prints a
// one-line JSON summary.
//
// The leases are flannel's exact format, for consecutive subnets of
// --network from --start on, each with a VTEP MAC of its own (locally
// administered, 0e:5e: then the subnet's address) and a public IP from
// 203.0.113.0/24 and 198.18.0.0/15 in turn. They are written in
// transactions of at most 128 puts (etcd's default --max-txn-ops), each key
// only if it does not exist: a subnet a real host holds is passed over, and
// its lease left alone. (A real lease under another key that overlaps a
// seeded one, of another length or dual-stack, is older: vtepd's table
// believes it and refuses the seeded one.) All keys are bound to one etcd
// lease of --ttl, so they go away by themselves. The network's
// configuration is not written.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vtepd/vtepd/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// maxTxnOps is etcd's default limit on the operations of one transaction.
const maxTxnOps = 128

type options struct {
	prefix    string
	count     int
	network   netip.Prefix
	subnetLen int
	start     netip.Addr // first subnet to seed
	vni       int
	ttl       time.Duration // 0: keys bound to no etcd lease
}

type summary struct {
	Count     int     `json:"count"`
	Skipped   int     `json:"skipped"` // subnets passed over: a lease was there
	First     string  `json:"first,omitempty"`
	Last      string  `json:"last,omitempty"`
	Lease     string  `json:"lease,omitempty"` // the etcd lease, in hex
	Txns      int     `json:"txns"`
	Elapsed   string  `json:"elapsed"`
	ElapsedMS float64 `json:"elapsed_ms"`
	Error     string  `json:"error,omitempty"`
}

func main() {
	endpoints := flag.String("endpoints", "http://127.0.0.1:2379", "comma-separated etcd endpoints")
	prefix := flag.String("prefix", "/coreos.com/network", "etcd prefix of the network, as flanneld's -etcd-prefix")
	count := flag.Int("count", 0, "number of leases to write")
	network := flag.String("network", "", "the overlay network, e.g. 10.0.0.0/8 (required)")
	subnetLen := flag.Int("subnet-len", 24, "prefix length of a host's subnet")
	start := flag.String("start", "", "first subnet to seed, e.g. 10.200.0.0 (default: the network's second subnet, flannel's SubnetMin)")
	skip := flag.Int("skip", 0, "number of subnets after --start to leave out")
	vni := flag.Int("vni", 1, "VNI the leases publish: the network's")
	ttl := flag.Duration("ttl", time.Hour, "TTL of the etcd lease the keys are bound to (0: none, the keys stay)")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()

	opts, err := parseOptions(*prefix, *count, *network, *subnetLen, *start, *skip, *vni, *ttl)
	if err != nil {
		fmt.Fprintln(os.Stderr, "seedleases:", err)
		os.Exit(2)
	}
	var eps []string
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		fmt.Fprintln(os.Stderr, "seedleases: --endpoints is empty")
		os.Exit(2)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, *timeout)
	defer cancelTimeout()
	// Only the endpoints given: no member discovery (AutoSyncInterval is 0),
	// so nothing outside the namespace is dialled.
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "seedleases:", err)
		os.Exit(1)
	}
	defer c.Close()

	if err := checkConfig(ctx, c, opts); err != nil {
		fmt.Fprintln(os.Stderr, "seedleases:", err)
		os.Exit(1)
	}
	s, err := seed(ctx, c, opts)
	if err != nil {
		s.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(s)
	if err != nil {
		os.Exit(1)
	}
}

func parseOptions(prefix string, count int, network string, subnetLen int, start string, skip, vni int, ttl time.Duration) (options, error) {
	o := options{prefix: prefix, count: count, subnetLen: subnetLen, vni: vni, ttl: ttl}
	var err error
	if count < 1 {
		return o, errors.New("--count must be at least 1")
	}
	if o.network, err = netip.ParsePrefix(network); err != nil || !o.network.Addr().Is4() || o.network.Masked() != o.network {
		return o, fmt.Errorf("--network %q is not an IPv4 network like 10.0.0.0/8", network)
	}
	if subnetLen < o.network.Bits() || subnetLen > 32 {
		return o, fmt.Errorf("--subnet-len %d is not between the network's /%d and /32", subnetLen, o.network.Bits())
	}
	if vni < 0 || vni >= 1<<24 {
		return o, fmt.Errorf("--vni %d is out of range", vni)
	}
	if ttl < 0 || ttl > 0 && ttl < time.Second {
		return o, fmt.Errorf("--ttl %s: an etcd lease lasts whole seconds", ttl)
	}
	if skip < 0 {
		return o, errors.New("--skip must not be negative")
	}
	size := uint64(1) << (32 - subnetLen)
	first := uint64(u32(o.network.Addr()))
	last := first + (uint64(1) << (32 - o.network.Bits())) - size // the last subnet's address
	at := first + size                                            // flannel's default SubnetMin
	if o.network.Bits() == subnetLen {
		at = first // a network of one subnet
	}
	if start != "" {
		a, err := netip.ParseAddr(start)
		if err != nil || !a.Is4() || !o.network.Contains(a) || uint64(u32(a))%size != 0 {
			return o, fmt.Errorf("--start %q is not the address of a /%d subnet in %s", start, subnetLen, o.network)
		}
		at = uint64(u32(a))
	}
	at += uint64(skip) * size
	if at > last || (last-at)/size+1 < uint64(count) {
		return o, fmt.Errorf("%s holds fewer than %d /%d subnets from %s on", o.network, count, subnetLen, addr(uint32(min(at, last))))
	}
	o.start = addr(uint32(at))
	return o, nil
}

// checkConfig reads the network's configuration, if there is one, and
// fails if the leases would not fit it: vtepd would refuse them all. It
// gives etcd 15 seconds to answer, where the client would wait for a
// connection as long as ctx lasts.
func checkConfig(ctx context.Context, c *clientv3.Client, opts options) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	key := store.ConfigKey(opts.prefix)
	resp, err := c.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		fmt.Fprintf(os.Stderr, "seedleases: warning: %s does not exist; the leases are not checked against the network's configuration\n", key)
		return nil
	}
	cfg, err := store.ParseConfig(key, resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	if cfg.Network != opts.network || cfg.SubnetLen != opts.subnetLen || cfg.Backend.VNI != opts.vni {
		return fmt.Errorf("%s is %s of /%d with VNI %d; the leases would be %s of /%d with VNI %d",
			key, cfg.Network, cfg.SubnetLen, cfg.Backend.VNI, opts.network, opts.subnetLen, opts.vni)
	}
	return nil
}

// seed writes opts.count leases, and says what it did. A subnet whose key
// exists is passed over for the next one; if the network runs out of
// subnets first, seed fails, and says how many it wrote.
func seed(ctx context.Context, c *clientv3.Client, opts options) (summary, error) {
	began := time.Now()
	var s summary
	done := func(err error) (summary, error) {
		el := time.Since(began)
		s.Elapsed, s.ElapsedMS = el.String(), float64(el)/float64(time.Millisecond)
		return s, err
	}
	var leaseOpts []clientv3.OpOption
	if opts.ttl > 0 {
		grant, err := c.Grant(ctx, int64(opts.ttl/time.Second))
		if err != nil {
			return done(fmt.Errorf("etcd lease: %w", err))
		}
		s.Lease = fmt.Sprintf("%x", int64(grant.ID))
		leaseOpts = append(leaseOpts, clientv3.WithLease(grant.ID))
	}
	subnets := store.SubnetsPrefix(opts.prefix)
	size := uint64(1) << (32 - opts.subnetLen)
	end := uint64(u32(opts.network.Addr())) + (uint64(1) << (32 - opts.network.Bits())) // past the network
	next := uint64(u32(opts.start))

	for s.Count < opts.count {
		// The next batch: as many subnets as are still wanted, at most a
		// transaction's worth.
		var batch []store.Lease
		for len(batch) < min(maxTxnOps, opts.count-s.Count) && next < end {
			p := netip.PrefixFrom(addr(uint32(next)), opts.subnetLen)
			batch = append(batch, lease(subnets, p, opts.vni, s.Count+len(batch)))
			next += size
		}
		if len(batch) == 0 {
			return done(fmt.Errorf("%s has no subnets left: %d written, %d taken", opts.network, s.Count, s.Skipped))
		}
		for len(batch) > 0 {
			// Each key only if it is not there; if one is, the transaction
			// reads which, and they are left out.
			cmps := make([]clientv3.Cmp, len(batch))
			puts := make([]clientv3.Op, len(batch))
			gets := make([]clientv3.Op, len(batch))
			for i, l := range batch {
				cmps[i] = clientv3.Compare(clientv3.CreateRevision(l.Key), "=", 0)
				puts[i] = clientv3.OpPut(l.Key, string(l.Value()), leaseOpts...)
				gets[i] = clientv3.OpGet(l.Key, clientv3.WithKeysOnly())
			}
			resp, err := c.Txn(ctx).If(cmps...).Then(puts...).Else(gets...).Commit()
			s.Txns++
			if err != nil {
				return done(fmt.Errorf("write leases from %s: %w", batch[0].Subnet, err))
			}
			if resp.Succeeded {
				if s.First == "" {
					s.First = batch[0].Subnet.String()
				}
				s.Last = batch[len(batch)-1].Subnet.String()
				s.Count += len(batch)
				break
			}
			taken := make(map[string]bool)
			for _, r := range resp.Responses {
				for _, kv := range r.GetResponseRange().Kvs {
					taken[string(kv.Key)] = true
				}
			}
			kept := batch[:0]
			for _, l := range batch {
				if !taken[l.Key] {
					kept = append(kept, l)
				}
			}
			if len(kept) == len(batch) {
				return done(fmt.Errorf("write leases from %s: the transaction failed, yet none of the keys exists", batch[0].Subnet))
			}
			s.Skipped += len(batch) - len(kept)
			batch = kept
		}
	}
	return done(nil)
}

// lease is the i-th seeded lease (from 0), for subnet p.
func lease(subnets string, p netip.Prefix, vni, i int) store.Lease {
	a := p.Addr().As4()
	return store.Lease{
		Key:      subnets + store.SubnetKey(p),
		Subnet:   p,
		PublicIP: publicIP(i),
		VtepMAC:  store.MAC{0x0e, 0x5e, a[0], a[1], a[2], a[3]},
		VNI:      vni,
	}
}

// publicIP cycles through 203.0.113.1-254 (TEST-NET-3) and 198.18.0.1 to
// 198.19.255.254 (the benchmarking range): unicast addresses no real host
// has. They need not be unique.
func publicIP(i int) netip.Addr {
	const testNet, bench = 254, 1<<17 - 2
	i %= testNet + bench
	if i < testNet {
		return netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i)})
	}
	return addr(198<<24 + 18<<16 + uint32(1+i-testNet))
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
