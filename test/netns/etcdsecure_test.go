package netns_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/internal/testca"

	"github.com/vtepd/vtepd/test/netns"
)

// TestEtcdClientCertificates runs the overlay against an etcd that serves
// https and requires client certificates. With the right files two hosts
// ping each other; with a certificate etcd refuses, or a CA that does not
// verify etcd, vtepd stays up, not ready, and its log says which file is
// wrong; an expired certificate stops it at start with a usage error.
func TestEtcdClientCertificates(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vttls")
	dir := t.TempDir()
	pki, err := netns.NewEtcdPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.StartEtcdWith(netns.EtcdOptions{PKI: pki}); err != nil {
		t.Fatalf("starting etcd with client certificates: %v", err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	if eps := lab.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "https://") {
		t.Fatalf("lab endpoints %v, want one https endpoint", eps)
	}
	other, err := testca.New("another CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(dir, "other-ca.pem")
	if err := os.WriteFile(otherCA, other.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	strangerCert, strangerKey := filepath.Join(dir, "stranger.pem"), filepath.Join(dir, "stranger-key.pem")
	if err := other.IssueFiles(testca.CertSpec{Name: "stranger"}, strangerCert, strangerKey); err != nil {
		t.Fatal(err)
	}
	tlsArgs := func(ca, cert, key string) []string {
		args := []string{"--etcd-cafile", ca}
		if cert != "" {
			args = append(args, "--etcd-certfile", cert, "--etcd-keyfile", key)
		}
		return args
	}

	t.Run("right certificates: the overlay works", func(t *testing.T) {
		o := &overlay{lab: lab}
		h1 := o.addHost(t, 0, tlsArgs(pki.CAFile, pki.ClientCert, pki.ClientKey)...)
		h2 := o.addHost(t, 0, tlsArgs(pki.CAFile, pki.ClientCert, pki.ClientKey)...)
		firstPing(t, h1, h2.Container.Addr)
		firstPing(t, h2, h1.Container.Addr)
	})

	for _, tc := range []struct {
		name  string
		args  []string
		hint  string // in the log line's hint
		cause string // in its error
	}{
		{"client certificate of another CA", tlsArgs(pki.CAFile, strangerCert, strangerKey),
			"etcd refused the client certificate --etcd-certfile " + strangerCert, "unknown certificate authority"},
		{"no client certificate", tlsArgs(pki.CAFile, "", ""),
			"it requires a client certificate; give --etcd-certfile and --etcd-keyfile", "certificate required"},
		{"CA file of another CA", tlsArgs(otherCA, pki.ClientCert, pki.ClientKey),
			"etcd's certificate is not signed by a CA in --etcd-cafile " + otherCA, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name+": not ready, and the log says why", func(t *testing.T) {
			h, err := lab.AddHost()
			if err != nil {
				t.Fatal(err)
			}
			p, err := h.StartVtepdNoWait(tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			const msg = "TLS handshake with etcd failed; retrying"
			var entries []netns.LogEntry
			err = netns.Poll(30*time.Second, func() error {
				if done, err := p.Exited(); done {
					t.Fatalf("vtepd exited (%v); it should wait for etcd to let it in", err)
				}
				if entries = p.Entries(msg); len(entries) == 0 {
					return os.ErrNotExist
				}
				return nil
			})
			if err != nil {
				t.Fatalf("no %q in the log within 30s:\n%s", msg, p.Log())
			}
			e := entries[0]
			if !strings.Contains(e.Str("hint"), tc.hint) || !strings.Contains(e.Str("error"), tc.cause) ||
				e.Str("endpoint") != strings.TrimPrefix(lab.Endpoints()[0], "https://") {
				t.Errorf("log line %v\nwant hint %q, error with %q, endpoint %s", e, tc.hint, tc.cause, lab.Endpoints()[0])
			}
			if len(p.Entries("vtepd ready")) > 0 {
				t.Errorf("vtepd became ready with an etcd that refuses it")
			}
			if _, err := os.Stat(h.SubnetFile); !os.IsNotExist(err) {
				t.Errorf("subnet file %s written (%v) by a vtepd etcd refuses", h.SubnetFile, err)
			}
		})
	}

	t.Run("expired client certificate: a usage error at start", func(t *testing.T) {
		cert, key := filepath.Join(dir, "expired.pem"), filepath.Join(dir, "expired-key.pem")
		spec := testca.CertSpec{Name: "expired", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}
		if err := pki.CA.IssueFiles(spec, cert, key); err != nil {
			t.Fatal(err)
		}
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.StartVtepdNoWait(tlsArgs(pki.CAFile, cert, key)...)
		if err != nil {
			t.Fatal(err)
		}
		err = p.Wait(30 * time.Second)
		if code := exitCode(err); code != 2 {
			t.Errorf("vtepd exited with %v, want exit status 2", err)
		}
		want := "vtepd run: etcdclient: TLS: --etcd-certfile " + cert + `: certificate "CN=expired" expired at `
		if !strings.Contains(p.Log(), want) {
			t.Errorf("output does not say %q:\n%s", want, p.Log())
		}
	})
}

// The passwords of the authentication tests: none may ever be in a log or
// in the status.
const (
	rootPassword  = "root-pw-Zq81"
	vtepdPassword = "vtepd-pw-Kx27"
	wrongPassword = "wrong-pw-Mv55"
)

// startAuthEtcd starts the lab's etcd with authentication on and login
// tokens that live one second, the network config written, and a user
// vtepd whose role may only touch flannel's prefix.
func startAuthEtcd(t *testing.T, lab *netns.Lab) *netns.Etcd {
	t.Helper()
	etcd, err := lab.StartEtcdWith(netns.EtcdOptions{AuthTokenTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 30*time.Second)
	if err := lab.PutNetworkConfig(ctx, overlayConfig); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddEtcdUser(ctx, "vtepd", vtepdPassword, prefix+"/"); err != nil {
		t.Fatal(err)
	}
	if err := lab.EnableEtcdAuth(ctx, rootPassword); err != nil {
		t.Fatal(err)
	}
	return etcd
}

// noPassword fails t if a process's log holds one of the passwords.
func noPassword(t *testing.T, procs ...*netns.Process) {
	t.Helper()
	for _, p := range procs {
		for _, pw := range []string{rootPassword, vtepdPassword, wrongPassword} {
			if strings.Contains(p.Log(), pw) {
				t.Errorf("%s's log holds a password", p.Name)
			}
		}
	}
}

// TestEtcdAuth runs the overlay against an etcd with authentication on,
// vtepd logging in as a user whose role may only touch flannel's prefix:
// with the password from a file and from VTEPD_ETCD_PASSWORD. Login tokens
// live one second, so that every renewal of a lease finds its token expired,
// and etcd restarts, voiding every token: etcd's client logs in again by
// itself, on the unary path (lease renewal) and on the watch. A wrong
// password stops vtepd with an error that says so. No password is ever in
// a log or in the status.
func TestEtcdAuth(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtauth")
	etcd := startAuthEtcd(t, lab)
	dir := t.TempDir()
	passwordFile := filepath.Join(dir, "etcd-password")
	wrongFile := filepath.Join(dir, "wrong-password")
	for path, pw := range map[string]string{passwordFile: vtepdPassword + "\n", wrongFile: wrongPassword + "\n"} {
		if err := os.WriteFile(path, []byte(pw), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var procs []*netns.Process
	o := &overlay{lab: lab}
	// A lease of ten seconds is renewed every five: each renewal is a read
	// and a keepalive with a token that has expired.
	h1 := o.addHost(t, 2, "--etcd-username", "vtepd", "--etcd-password-file", passwordFile, "--subnet-lease-ttl", "10s")
	procs = append(procs, h1.Vtepd)

	t.Run("wrong password: vtepd stops and says so", func(t *testing.T) {
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.StartVtepdNoWait("--etcd-username", "vtepd", "--etcd-password-file", wrongFile)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		// Status 2: the unit does not restart it into the same refusal.
		if err := p.Wait(30 * time.Second); exitCode(err) != 2 {
			t.Errorf("vtepd with a wrong password exited with %v, want exit status 2", err)
		}
		for _, want := range []string{"authentication failed", `--etcd-username "vtepd"`} {
			if !strings.Contains(p.Log(), want) {
				t.Errorf("log does not say %q:\n%s", want, p.Log())
			}
		}
	})

	// The environment of vtepd alone: the test runs beside others.
	h2, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	h2.Env = []string{"VTEPD_ETCD_PASSWORD=" + vtepdPassword}
	if _, err := h2.StartVtepd("--etcd-username", "vtepd"); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.AddContainer(2); err != nil {
		t.Fatal(err)
	}
	o.hosts = append(o.hosts, h2)
	procs = append(procs, h2.Vtepd)

	t.Run("password from a file and from the environment: the overlay works", func(t *testing.T) {
		firstPing(t, h1, h2.Container.Addr)
		firstPing(t, h2, h1.Container.Addr)
	})

	renewals := func() int { return len(h1.Vtepd.Entries("own lease renewed")) }
	failures := func() int { return len(h1.Vtepd.Entries("renewing own lease failed; retrying")) }
	waitRenewals := func(t *testing.T, n int) {
		t.Helper()
		err := netns.Poll(30*time.Second, func() error {
			if renewals() < n {
				return os.ErrNotExist
			}
			return nil
		})
		if err != nil {
			t.Fatalf("h1 renewed its lease %d times, want %d:\n%s", renewals(), n, netns.Tail(h1.Vtepd.Log(), 20))
		}
	}

	t.Run("expired tokens: renewals log in again", func(t *testing.T) {
		waitRenewals(t, 3)
		if n := failures(); n > 0 {
			t.Errorf("%d renewals failed with tokens that expire between them", n)
		}
		// Routine: the client logs in again and retries at once.
		if strings.Contains(h1.Vtepd.Log(), "invalid auth token") {
			t.Errorf("an expired token was logged:\n%s", netns.Tail(h1.Vtepd.Log(), 10))
		}
	})

	t.Run("etcd restarts: every token void; watch and renewals resume", func(t *testing.T) {
		etcd.Kill()
		if err := etcd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := lab.WaitEtcd(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		before := renewals()
		c := etcdClient(t, lab)
		f := newFakes(t, c, 1)[0]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 30*time.Second); err != nil {
			t.Errorf("a lease written after the restart: %v", err)
		}
		waitRenewals(t, before+2)
	})

	t.Run("no password in any log or status", func(t *testing.T) {
		noPassword(t, procs...)
		for _, h := range []*netns.Host{h1, h2} {
			out, err := h.Exec(lab.Bin.Vtepd, "status", "--json")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, vtepdPassword) {
				t.Errorf("%s's status holds the password", h.Name)
			}
		}
	})
}

// TestEtcdAuthAwayAtStart: logging in needs etcd, and vtepd started while
// its etcd is away waits for it, saying so, rather than exit into a restart
// loop; it logs in once etcd is back, and its log holds no password.
func TestEtcdAuthAwayAtStart(t *testing.T) {
	t.Parallel()
	lab := newLab(t, "vtauthw")
	etcd := startAuthEtcd(t, lab)
	etcd.Kill()
	h, err := lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	h.Env = []string{"VTEPD_ETCD_PASSWORD=" + vtepdPassword}
	p, err := h.StartVtepdNoWait("--etcd-username", "vtepd")
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Poll(30*time.Second, func() error {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("vtepd exited while etcd was away: %v", err)
		}
		if len(p.Entries("etcd did not answer the login; retrying")) == 0 {
			return os.ErrNotExist
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, p.Tail(20))
	}
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(p, 60*time.Second); err != nil {
		t.Fatalf("vtepd not ready once etcd is back: %v\n%s", err, p.Tail(20))
	}
	noPassword(t, p)
}

// exitCode is a process's exit status from its Wait error: 0 for nil, -1
// when it did not exit normally.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}
