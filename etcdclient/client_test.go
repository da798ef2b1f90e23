package etcdclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/internal/testca"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const testPassword = "s3cret-Pw-81"

func TestSecretNeverPrints(t *testing.T) {
	cfg := Config{Endpoints: []string{"http://e:2379"}, Username: "vtepd", Password: testPassword}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		out = append(out, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, cfg.Password))
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(b))
	core, logs := observer.New(zapcore.DebugLevel)
	zap.New(core).Info("config", zap.Any("etcd", cfg), zap.Stringer("password", cfg.Password))
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, buf.String())
	}
	for _, s := range out {
		if strings.Contains(s, testPassword) || strings.Contains(s, fmt.Sprintf("%x", testPassword)) {
			t.Errorf("the password shows in %s", s)
		}
	}
	if string(cfg.Password) != testPassword {
		t.Errorf("string(Secret) = %q, want the password", string(cfg.Password))
	}
}

func TestQuietTokenRefresh(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	log := zap.New(core).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return quietTokenRefresh{c} })).With(zap.String("target", "t"))
	log.Warn("retrying of unary invoker failed", zap.Error(rpctypes.ErrGRPCInvalidAuthToken))
	log.Debug("below the level", zap.Error(errors.New("x")))
	log.Warn("retrying of unary invoker failed", zap.Error(rpctypes.ErrGRPCAuthFailed))
	log.Warn("retrying of unary invoker failed to fetch new auth token", zap.Error(rpctypes.ErrGRPCInvalidAuthToken))
	var got []string
	for _, e := range logs.All() {
		got = append(got, fmt.Sprintf("%s: %v (target %v)", e.Message, e.ContextMap()["error"], e.ContextMap()["target"]))
	}
	want := []string{
		fmt.Sprintf("retrying of unary invoker failed: %v (target t)", rpctypes.ErrGRPCAuthFailed),
		fmt.Sprintf("retrying of unary invoker failed to fetch new auth token: %v (target t)", rpctypes.ErrGRPCInvalidAuthToken),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTLSHints(t *testing.T) {
	remote := func(alert string) error {
		return &net.OpError{Op: "remote error", Err: errors.New(alert)}
	}
	verify := func(err error) error { return fmt.Errorf("tls: failed to verify certificate: %w", err) }
	withFiles := &tlsReporter{caFile: "/x/ca.pem", certFile: "/x/c.pem"}
	noFiles := &tlsReporter{}
	for _, tt := range []struct {
		r    *tlsReporter
		err  error
		want string
	}{
		{withFiles, verify(x509.UnknownAuthorityError{}), "etcd's certificate is not signed by a CA in --etcd-cafile /x/ca.pem"},
		{noFiles, verify(x509.UnknownAuthorityError{}), "not signed by a CA this system trusts: give etcd's CA with --etcd-cafile"},
		{withFiles, verify(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "e"}), "not for the address in --etcd-endpoints"},
		{withFiles, verify(x509.CertificateInvalidError{Reason: x509.Expired}), "etcd's certificate has expired or is not valid yet"},
		{noFiles, remote("tls: certificate required"), "it requires a client certificate; give --etcd-certfile and --etcd-keyfile"},
		{withFiles, remote("tls: unknown certificate authority"), "etcd refused the client certificate --etcd-certfile /x/c.pem: is it signed by a CA in etcd's --trusted-ca-file?"},
		{withFiles, remote("tls: expired certificate"), "etcd refused the client certificate --etcd-certfile /x/c.pem: it says it has expired"},
		{withFiles, remote("tls: protocol version not supported"), ""},
		{withFiles, errors.New("EOF"), ""},
	} {
		if got := tt.r.hint(tt.err); !strings.Contains(got, tt.want) || tt.want == "" && got != "" {
			t.Errorf("hint(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestTLSReportedOncePerError(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	r := &tlsReporter{log: zap.New(core), last: map[string]reported{}}
	a, b := errors.New("remote error: a"), errors.New("remote error: b")
	r.report("e1:2379", a)
	r.report("e1:2379", a) // the same: once a minute
	r.report("e2:2379", a) // another endpoint
	r.report("e1:2379", b) // another error
	if n := logs.Len(); n != 3 {
		t.Errorf("%d lines logged, want 3: %v", n, logs.All())
	}
	r.last["e1:2379"] = reported{b.Error(), time.Now().Add(-time.Minute)}
	r.report("e1:2379", b) // a minute later: said again
	if n := logs.Len(); n != 4 {
		t.Errorf("%d lines logged, want 4 after a minute", n)
	}
}

// TestDialEtcdWaitsForLogin: with a username, etcd's client logs in before
// it returns; Dial retries while etcd does not answer, saying so, and
// stops when its context ends. The endpoint is a Unix socket nobody
// listens on: no packet leaves the test.
func TestDialEtcdWaitsForLogin(t *testing.T) {
	t.Parallel() // an attempt takes the dial timeout: 7 s spent waiting
	cfg := Config{
		Endpoints: []string{"unix://" + filepath.Join(t.TempDir(), "nobody.sock")},
		Username:  "vtepd",
		Password:  testPassword,
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)

	t.Run("cancelled at once", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		c, err := Dial(ctx, cfg, log)
		if c != nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial = %v, %v; want context.Canceled", c, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Dial returned %v after its context was cancelled", took)
		}
	})

	t.Run("retries, saying why", func(t *testing.T) {
		if testing.Short() {
			t.Skip("an attempt takes the dial timeout, 5s")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 7*time.Second)
		defer cancel()
		if _, err := Dial(ctx, cfg, log); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial = %v, want context.DeadlineExceeded", err)
		}
		retries := logs.FilterMessage("etcd did not answer the login; retrying").All()
		if len(retries) == 0 {
			t.Fatalf("no retry logged: %v", logs.All())
		}
		if u := retries[0].ContextMap()["username"]; u != "vtepd" {
			t.Errorf("retry line names user %v, want vtepd", u)
		}
	})
	for _, e := range logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), testPassword) {
			t.Errorf("the password is in %v", e)
		}
	}
}

// TestClientCertificateReload: the client certificate is read again at
// each handshake; one that cannot be used leaves the last good one in use,
// with a warning that says why.
func TestClientCertificateReload(t *testing.T) {
	ca, err := testca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	issue := func(name string) {
		t.Helper()
		if err := ca.IssueFiles(testca.CertSpec{Name: name}, certFile, keyFile); err != nil {
			t.Fatal(err)
		}
	}
	issue("first")
	core, logs := observer.New(zapcore.DebugLevel)
	l, err := Config{Endpoints: []string{"https://e:2379"}, CertFile: certFile, KeyFile: keyFile}.load(zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	get := func() string {
		t.Helper()
		c, err := l.tls.GetClientCertificate(nil)
		if err != nil || c == nil {
			t.Fatalf("GetClientCertificate = %v, %v", c, err)
		}
		return c.Leaf.Subject.CommonName
	}
	if cn := get(); cn != "first" {
		t.Errorf("certificate %q, want first", cn)
	}
	issue("renewed")
	if cn := get(); cn != "renewed" {
		t.Errorf("after renewal: certificate %q, want renewed", cn)
	}
	if err := os.WriteFile(keyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cn := get(); cn != "renewed" {
		t.Errorf("with a broken key file: certificate %q, want the last good one", cn)
	}
	warn := logs.FilterMessage("etcd client certificate cannot be used; offering the one loaded before").All()
	if len(warn) != 1 || !strings.Contains(fmt.Sprint(warn[0].ContextMap()["error"]), "--etcd-keyfile "+keyFile+": no PEM private key found") {
		t.Errorf("warnings %v, want one naming the key file", warn)
	}
}

func TestPasswordFile(t *testing.T) {
	dir := t.TempDir()
	for i, tt := range []struct{ content, want string }{
		{"pw\n", "pw"},
		{"pw\r\n", "pw"},
		{"pw", "pw"},
		{"pw\n\n", "pw\n"}, // one newline only: the rest is the password's
		{" pw \t\n", " pw \t"},
	} {
		path := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := Config{Endpoints: []string{"http://e:2379"}, Username: "u", PasswordFile: path}.load(zap.NewNop())
		if err != nil || l.password != tt.want {
			t.Errorf("password file %q: %q, %v; want %q", tt.content, l.password, err, tt.want)
		}
	}
}

func TestParseKeyForms(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		block *pem.Block
		pub   crypto.PublicKey
	}{
		{&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}, rsaKey.Public()},
		{&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}, ecKey.Public()},
		{&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}, edKey.Public()},
	} {
		// A file may start with the parameters or a certificate.
		data := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8}}), pem.EncodeToMemory(tt.block)...)
		k, err := parseKey(data)
		if err != nil {
			t.Errorf("%s: %v", tt.block.Type, err)
			continue
		}
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.pub) {
			t.Errorf("%s: parsed another key", tt.block.Type)
		}
	}
	if _, err := parseKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")})); err == nil ||
		!strings.Contains(err.Error(), "PRIVATE KEY: not an RSA, ECDSA or Ed25519 private key") {
		t.Errorf("junk key: %v", err)
	}
}
