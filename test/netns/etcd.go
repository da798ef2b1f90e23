package netns

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/internal/testca"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Etcd is one member of the lab's etcd, running in the underlay namespace
// or, as production runs etcd, in a namespace of its own.
type Etcd struct {
	Name      string
	Addr      netip.Addr
	ClientURL string
	DataDir   string
	// NS is the namespace the member runs in: the underlay's, or its own
	// (see EtcdOptions.OwnNamespaces), where Cut can part it from others.
	NS string

	lab  *Lab
	args []string
	proc *Process
	// login is how the lab's own client gets in: set by the options the
	// member started with and by EnableEtcdAuth.
	login etcdLogin
}

// etcdLogin is what the lab's client presents to its etcd.
type etcdLogin struct {
	tls                *tls.Config
	username, password string
}

// EtcdOptions say what the lab's etcd asks of its clients. The zero value
// asks nothing: http, no authentication.
type EtcdOptions struct {
	// PKI, if set, makes etcd serve clients over https with PKI's server
	// certificate and require a client certificate signed by PKI's CA. The
	// lab's own client presents PKI's client certificate.
	PKI *EtcdPKI
	// AuthTokenTTL is how long an unused login token lives once
	// authentication is on (0: etcd's default, five minutes). etcd counts
	// it in whole seconds, one at least.
	AuthTokenTTL time.Duration
	// OwnNamespaces puts each member in a namespace of its own, <lab>-e1
	// up, on a veth to the underlay bridge, at 198.51.100.2 up: a machine
	// of its own, as production runs etcd, which a test can cut off from
	// the others (Cut) without cutting anything else.
	OwnNamespaces bool
	// HeartbeatInterval and ElectionTimeout are raft's (0: etcd's, 100 ms
	// and 1 s). Shorter, a new leader is elected, and a member cut off
	// from the others notices it has none, sooner; a member that stops
	// hearing a leader for three election timeouts ends the watches that
	// require one. Only whole milliseconds count.
	HeartbeatInterval, ElectionTimeout time.Duration
}

// StartEtcd starts a single-member etcd on the underlay bridge's address.
func (l *Lab) StartEtcd() (*Etcd, error) {
	return l.StartEtcdWith(EtcdOptions{})
}

// StartEtcdWith starts a single-member etcd with opts.
func (l *Lab) StartEtcdWith(opts EtcdOptions) (*Etcd, error) {
	members, err := l.startEtcd(1, opts)
	if err != nil {
		return nil, err
	}
	return members[0], nil
}

// StartEtcdCluster starts an n-member etcd cluster, members on 198.51.100.1
// up to .n, all in the underlay namespace, and waits until it serves.
func (l *Lab) StartEtcdCluster(n int) ([]*Etcd, error) {
	return l.startEtcd(n, EtcdOptions{})
}

// StartEtcdClusterWith starts an n-member etcd cluster with opts, and waits
// until it serves.
func (l *Lab) StartEtcdClusterWith(n int, opts EtcdOptions) ([]*Etcd, error) {
	return l.startEtcd(n, opts)
}

// maxMembers is the most members a lab's etcd has: their addresses stop
// below the hosts' (198.51.100.11 up), and EtcdPKI's server certificate
// names .1 to .9.
const maxMembers = 8

func (l *Lab) startEtcd(n int, opts EtcdOptions) ([]*Etcd, error) {
	if n < 1 || n > maxMembers {
		return nil, fmt.Errorf("netns: an etcd of %d members: want 1 to %d", n, maxMembers)
	}
	scheme := "http"
	var login etcdLogin
	if opts.PKI != nil {
		scheme = "https"
		tc, err := opts.PKI.ClientTLS()
		if err != nil {
			return nil, err
		}
		login.tls = tc
	}
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return nil, err
	}
	br, err := ul.link("br0")
	if err != nil {
		return nil, err
	}
	var members []*Etcd
	var initial []string
	for i := 1; i <= n; i++ {
		e := &Etcd{
			Name:    fmt.Sprintf("etcd%d", i),
			DataDir: filepath.Join(l.Dir, fmt.Sprintf("etcd%d.data", i)),
			lab:     l,
			login:   login,
		}
		if opts.OwnNamespaces {
			e.Addr = netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)})
			e.NS = fmt.Sprintf("%s-e%d", l.Name, i)
			if err := l.addMemberNamespace(e.NS, fmt.Sprintf("e%d", i), e.Addr); err != nil {
				return nil, err
			}
		} else {
			e.Addr = netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			e.NS = l.Underlay
			if e.Addr != UnderlayBridge {
				if err := ul.addAddrs(br, netip.PrefixFrom(e.Addr, UnderlayNet.Bits())); err != nil {
					return nil, err
				}
			}
		}
		e.ClientURL = fmt.Sprintf("%s://%s:2379", scheme, e.Addr)
		members = append(members, e)
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", e.Name, e.Addr))
	}
	for _, e := range members {
		e.args = []string{l.Bin.LabEtcd,
			"--name", e.Name, "--data-dir", e.DataDir,
			"--listen-client-urls", e.ClientURL,
			"--listen-peer-urls", fmt.Sprintf("http://%s:2380", e.Addr),
			"--initial-cluster", strings.Join(initial, ","),
		}
		if d := opts.HeartbeatInterval.Milliseconds(); d > 0 {
			e.args = append(e.args, "--heartbeat-interval", strconv.FormatInt(d, 10))
		}
		if d := opts.ElectionTimeout.Milliseconds(); d > 0 {
			e.args = append(e.args, "--election-timeout", strconv.FormatInt(d, 10))
		}
		if p := opts.PKI; p != nil {
			e.args = append(e.args, "--cert-file", p.ServerCert, "--key-file", p.ServerKey, "--trusted-ca-file", p.CAFile)
		}
		if opts.AuthTokenTTL > 0 {
			e.args = append(e.args, "--auth-token-ttl", strconv.Itoa(int(max(opts.AuthTokenTTL, time.Second)/time.Second)))
		}
		if err := e.Start(); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.etcd = append(l.etcd, members...)
	l.mu.Unlock()
	return members, l.WaitEtcd(30 * time.Second)
}

// addMemberNamespace makes namespace ns for an etcd member: eth0 with addr,
// on a veth whose other end, port, is on the underlay bridge. The member
// needs no route: the hosts and the underlay namespace, all it talks to,
// are on the bridge's subnet.
func (l *Lab) addMemberNamespace(ns, port string, addr netip.Addr) error {
	mc, err := l.addNamespace(ns)
	if err != nil {
		return err
	}
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return err
	}
	eth0, p, err := veth(mc, "eth0", ul, port, 0)
	if err != nil {
		return err
	}
	err = do(
		func() error {
			return ul.nl.LinkSetMaster(p, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}})
		},
		func() error { return ul.up(p) },
		func() error { return mc.addAddrs(eth0, netip.PrefixFrom(addr, UnderlayNet.Bits())) },
		func() error { return mc.up(eth0) },
		func() error { return ul.waitOperUp(port) },
		func() error { return mc.waitOperUp("eth0") },
	)
	if err != nil {
		return fmt.Errorf("netns: etcd member namespace %s: %w", ns, err)
	}
	return nil
}

// Start starts (or restarts) the member with its data directory.
func (e *Etcd) Start() error {
	p, err := e.lab.Start(e.NS, e.Name, e.args...)
	if err != nil {
		return err
	}
	e.proc = p
	return nil
}

// Kill stops the member at once, as a crash would.
func (e *Etcd) Kill() { e.proc.Kill() }

// Stop stops the member cleanly.
func (e *Etcd) Stop() error { return e.proc.Stop(5 * time.Second) }

// Endpoints returns the client URLs of every member.
func (l *Lab) Endpoints() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var eps []string
	for _, e := range l.etcd {
		eps = append(eps, e.ClientURL)
	}
	return eps
}

// WaitEtcd waits until etcd answers a linearizable read.
func (l *Lab) WaitEtcd(timeout time.Duration) error {
	// With authentication on, making the client is the first request, and
	// it fails while etcd is still starting: it is retried too.
	var c *clientv3.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	return poll(timeout, func() error {
		if c == nil {
			var err error
			if c, err = l.EtcdClient(); err != nil {
				return err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Get(ctx, "/lab-ready")
		return err
	})
}

// EtcdClient returns a client for the lab's etcd, with the client
// certificate and the root login etcd asks for, if it does. Its connections
// are opened inside the underlay namespace: the test process itself stays
// in the root namespace, where no lab address must ever be used.
func (l *Lab) EtcdClient() (*clientv3.Client, error) {
	return l.EtcdClientFor(l.Endpoints()...)
}

// EtcdClientFor is EtcdClient with only the endpoints given: a client that
// asks one member, e.g. whether it is back.
func (l *Lab) EtcdClientFor(endpoints ...string) (*clientv3.Client, error) {
	var login etcdLogin
	l.mu.Lock()
	if len(l.etcd) > 0 {
		login = l.etcd[0].login
	}
	l.mu.Unlock()
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(DialerIn(l.Underlay))},
		TLS:         login.tls,
		Username:    login.username,
		Password:    login.password,
	})
}

// EnableEtcdAuth turns etcd's authentication on, with a user root whose
// password is rootPassword. From then on every client must log in, the
// lab's own as root.
func (l *Lab) EnableEtcdAuth(ctx context.Context, rootPassword string) error {
	c, err := l.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.UserAdd(ctx, "root", rootPassword); err != nil {
		return fmt.Errorf("netns: etcd: add user root: %w", err)
	}
	if _, err := c.UserGrantRole(ctx, "root", "root"); err != nil {
		return fmt.Errorf("netns: etcd: grant root to root: %w", err)
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("netns: etcd: enable authentication: %w", err)
	}
	l.mu.Lock()
	for _, e := range l.etcd {
		e.login.username, e.login.password = "root", rootPassword
	}
	l.mu.Unlock()
	return nil
}

// AddEtcdUser adds a user with a role of the same name that may read and
// write every key under prefix.
func (l *Lab) AddEtcdUser(ctx context.Context, name, password, prefix string) error {
	c, err := l.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.RoleAdd(ctx, name); err != nil {
		return fmt.Errorf("netns: etcd: add role %s: %w", name, err)
	}
	if _, err := c.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("netns: etcd: let role %s read and write %s: %w", name, prefix, err)
	}
	if _, err := c.UserAdd(ctx, name, password); err != nil {
		return fmt.Errorf("netns: etcd: add user %s: %w", name, err)
	}
	if _, err := c.UserGrantRole(ctx, name, name); err != nil {
		return fmt.Errorf("netns: etcd: grant role %s to %s: %w", name, name, err)
	}
	return nil
}

// DialerIn returns a TCP dialer whose sockets belong to namespace ns.
func DialerIn(ns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := Do(ns, func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
}

// Do runs fn on an OS thread that has entered namespace ns, then moves the
// thread back. A socket made in fn stays in ns when used from any other
// thread. If the thread cannot be moved back it is never unlocked, so the Go
// runtime retires it rather than run other goroutines in the lab's namespace.
func Do(ns string, fn func() error) error {
	return elsewhere(func() error {
		target, err := netns.GetFromName(ns)
		if err != nil {
			return fmt.Errorf("netns: open %s: %w", ns, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("netns: enter %s: %w", ns, err)
		}
		return nil
	}, fn, ns)
}

// PutNetworkConfig writes the network configuration under the default
// prefix.
func (l *Lab) PutNetworkConfig(ctx context.Context, config string) error {
	return l.Put(ctx, "/coreos.com/network/config", config)
}

// Put writes one key.
func (l *Lab) Put(ctx context.Context, key, value string) error {
	c, err := l.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Put(ctx, key, value)
	return err
}

// Etcd returns the lab's etcd members.
func (l *Lab) Etcd() []*Etcd {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Etcd(nil), l.etcd...)
}

// EtcdPKI is a CA and the certificates of the lab's etcd and of its
// clients, as PEM files.
type EtcdPKI struct {
	CA                    *testca.CA
	CAFile                string
	ServerCert, ServerKey string // for 127.0.0.1 and 198.51.100.1 to .9
	ClientCert, ClientKey string
}

// NewEtcdPKI makes a CA and its certificates in dir.
func NewEtcdPKI(dir string) (*EtcdPKI, error) {
	ca, err := testca.New("vtepd lab etcd CA")
	if err != nil {
		return nil, err
	}
	p := &EtcdPKI{
		CA:         ca,
		CAFile:     filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "etcd-server.pem"),
		ServerKey:  filepath.Join(dir, "etcd-server-key.pem"),
		ClientCert: filepath.Join(dir, "etcd-client.pem"),
		ClientKey:  filepath.Join(dir, "etcd-client-key.pem"),
	}
	if err := os.WriteFile(p.CAFile, ca.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	server := testca.CertSpec{Name: "lab etcd", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	for i := 1; i <= 9; i++ {
		server.IPs = append(server.IPs, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
	}
	if err := ca.IssueFiles(server, p.ServerCert, p.ServerKey); err != nil {
		return nil, err
	}
	if err := ca.IssueFiles(testca.CertSpec{Name: "lab client"}, p.ClientCert, p.ClientKey); err != nil {
		return nil, err
	}
	return p, nil
}

// ClientTLS is the TLS configuration of a client that trusts the CA and
// presents the client certificate.
func (p *EtcdPKI) ClientTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}

// EtcdLeader returns the member the cluster follows now, from etcd's
// Status asked of every member: those that answer must name the same
// leader, and a majority must answer.
func (l *Lab) EtcdLeader(ctx context.Context) (*Etcd, error) {
	members := l.Etcd()
	c, err := l.EtcdClient()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	byID := map[uint64]*Etcd{}
	leaders := map[uint64]bool{}
	var errs []error
	for _, e := range members {
		resp, err := c.Status(ctx, e.ClientURL)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.Name, err))
			continue
		}
		byID[resp.Header.MemberId] = e
		leaders[resp.Leader] = true
	}
	if len(byID) <= len(members)/2 {
		return nil, fmt.Errorf("netns: etcd leader: %d of %d members answer: %w", len(byID), len(members), errors.Join(errs...))
	}
	if len(leaders) != 1 {
		return nil, fmt.Errorf("netns: etcd leader: the members name %d leaders", len(leaders))
	}
	var leader uint64
	for id := range leaders {
		leader = id
	}
	if e := byID[leader]; e != nil && leader != 0 {
		return e, nil
	}
	return nil, fmt.Errorf("netns: etcd leader: the members follow %x, which does not answer", leader)
}

// WaitMember waits until member e is part of the cluster again: it knows a
// leader and serves a linearizable read, which it can only once it has
// caught up with the leader's log.
func (l *Lab) WaitMember(e *Etcd, timeout time.Duration) error {
	c, err := l.EtcdClientFor(e.ClientURL)
	if err != nil {
		return err
	}
	defer c.Close()
	err = poll(timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := c.Status(ctx, e.ClientURL)
		if err != nil {
			return err
		}
		if st.Leader == 0 || len(st.Errors) > 0 {
			return fmt.Errorf("leader %x, errors %v", st.Leader, st.Errors)
		}
		_, err = c.Get(ctx, "/lab-ready")
		return err
	})
	if err != nil {
		return fmt.Errorf("netns: etcd member %s not back within %v: %w", e.Name, timeout, err)
	}
	return nil
}

// Cut is a partition made inside one lab namespace: every IPv4 packet to or
// from the addresses it names is dropped there, in and out and forwarded,
// silently, as a network that breaks drops them (no reset, no ICMP error),
// until Heal. Nothing else of the namespace changes, and nothing outside
// it: a host cut from etcd members keeps its data path to the other hosts,
// a member cut from the others keeps its clients.
type Cut struct {
	NS    string
	Addrs []netip.Addr

	nft   *nftables.Conn
	table *nftables.Table
}

// Cut drops, inside namespace ns (one of the lab's), every packet to or
// from addrs, from now until the Cut is healed or the lab closed.
func (l *Lab) Cut(ns string, addrs ...netip.Addr) (*Cut, error) {
	nc, err := l.conn(ns)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if !a.Is4() || !UnderlayNet.Contains(a) {
			return nil, fmt.Errorf("netns: cut %s from %s: only underlay addresses (%s) are cut", ns, a, UnderlayNet)
		}
	}
	conn, err := nftables.New(nftables.WithNetNSFd(int(nc.fd)))
	if err != nil {
		return nil, fmt.Errorf("netns: nftables in %s: %w", ns, err)
	}
	// A name of its own, so that cuts made in one namespace heal one by
	// one.
	c := &Cut{NS: ns, Addrs: addrs, nft: conn,
		table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: fmt.Sprintf("lab-cut-%08x", rand.Uint32())}}
	conn.AddTable(c.table)
	accept := nftables.ChainPolicyAccept
	const saddr, daddr = 12, 16 // offsets in the IPv4 header
	for _, ch := range []struct {
		name    string
		hook    *nftables.ChainHook
		offsets []uint32
	}{
		{"in", nftables.ChainHookInput, []uint32{saddr}},
		{"out", nftables.ChainHookOutput, []uint32{daddr}},
		{"fwd", nftables.ChainHookForward, []uint32{saddr, daddr}},
	} {
		chain := conn.AddChain(&nftables.Chain{Name: ch.name, Table: c.table, Type: nftables.ChainTypeFilter,
			Hooknum: ch.hook, Priority: nftables.ChainPriorityRaw, Policy: &accept})
		for _, off := range ch.offsets {
			for _, a := range addrs {
				b := a.As4()
				conn.AddRule(&nftables.Rule{Table: c.table, Chain: chain, Exprs: []expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
					&expr.Verdict{Kind: expr.VerdictDrop},
				}})
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("netns: cut %s from %v: %w", ns, addrs, err)
	}
	return c, nil
}

// Heal removes the cut: packets flow again. Healing twice is an error.
func (c *Cut) Heal() error {
	c.nft.DelTable(c.table)
	if err := c.nft.Flush(); err != nil {
		return fmt.Errorf("netns: heal the cut of %s from %v: %w", c.NS, c.Addrs, err)
	}
	return nil
}
