package netns

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/internal/testca"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Etcd is one member of the lab's etcd, running in the underlay namespace.
type Etcd struct {
	Name      string
	Addr      netip.Addr
	ClientURL string
	DataDir   string

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

func (l *Lab) startEtcd(n int, opts EtcdOptions) ([]*Etcd, error) {
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
		addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		if addr != UnderlayBridge {
			if err := ul.addAddrs(br, netip.PrefixFrom(addr, UnderlayNet.Bits())); err != nil {
				return nil, err
			}
		}
		e := &Etcd{
			Name:      fmt.Sprintf("etcd%d", i),
			Addr:      addr,
			ClientURL: fmt.Sprintf("%s://%s:2379", scheme, addr),
			DataDir:   filepath.Join(l.Dir, fmt.Sprintf("etcd%d.data", i)),
			lab:       l,
			login:     login,
		}
		members = append(members, e)
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", e.Name, addr))
	}
	for _, e := range members {
		e.args = []string{l.Bin.LabEtcd,
			"--name", e.Name, "--data-dir", e.DataDir,
			"--listen-client-urls", e.ClientURL,
			"--listen-peer-urls", fmt.Sprintf("http://%s:2380", e.Addr),
			"--initial-cluster", strings.Join(initial, ","),
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

// Start starts (or restarts) the member with its data directory.
func (e *Etcd) Start() error {
	p, err := e.lab.Start(e.lab.Underlay, e.Name, e.args...)
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
	var login etcdLogin
	l.mu.Lock()
	if len(l.etcd) > 0 {
		login = l.etcd[0].login
	}
	l.mu.Unlock()
	return clientv3.New(clientv3.Config{
		Endpoints:   l.Endpoints(),
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
