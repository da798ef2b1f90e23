package main

import (
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/etcdclient"

	"github.com/vtepd/vtepd/internal/testca"
)

// secureEndpoint is never contacted: every command below fails validation
// first. TEST-NET-1, should one ever try.
const secureEndpoint = "https://192.0.2.1:2379"

// tlsFiles are certificates and keys, good and bad, in a test's directory.
type tlsFiles struct {
	dir                   string
	ca, cert, key         string // a CA and a client certificate it signed
	otherCert, otherKey   string // a client certificate of another CA
	expiredCert, expKey   string
	futureCert, futureKey string
	expiredCA             string
}

func newTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	f := tlsFiles{dir: dir, ca: filepath.Join(dir, "ca.pem"), expiredCA: filepath.Join(dir, "expired-ca.pem")}
	ca, err := testca.New("test CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testca.New("other CA")
	if err != nil {
		t.Fatal(err)
	}
	write(t, f.ca, string(ca.CertPEM()))
	now := time.Now()
	for _, c := range []struct {
		ca        *testca.CA
		spec      testca.CertSpec
		cert, key *string
		name      string
	}{
		{ca: ca, spec: testca.CertSpec{Name: "client"}, cert: &f.cert, key: &f.key, name: "client"},
		{ca: other, spec: testca.CertSpec{Name: "stranger"}, cert: &f.otherCert, key: &f.otherKey, name: "other"},
		{ca: ca, spec: testca.CertSpec{Name: "expired", NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}, cert: &f.expiredCert, key: &f.expKey, name: "expired"},
		{ca: ca, spec: testca.CertSpec{Name: "future", NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)}, cert: &f.futureCert, key: &f.futureKey, name: "future"},
	} {
		*c.cert, *c.key = filepath.Join(dir, c.name+".pem"), filepath.Join(dir, c.name+"-key.pem")
		if err := c.ca.IssueFiles(c.spec, *c.cert, *c.key); err != nil {
			t.Fatal(err)
		}
	}
	expiredCA, _, err := ca.Issue(testca.CertSpec{Name: "expired CA", CA: true, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	write(t, f.expiredCA, string(expiredCA))
	return f
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEtcdFlagErrors(t *testing.T) {
	const secret = "pw-Ghj77-secret"
	f := newTLSFiles(t)
	file := func(name, content string) string {
		p := filepath.Join(f.dir, name)
		write(t, p, content)
		return p
	}
	pwFile := file("password", secret+"\n")
	emptyPw := file("empty-password", "\n")
	garbage := file("garbage.pem", "not a certificate\n")
	keyBlock, _ := pem.Decode([]byte(readFile(t, f.key)))
	junk := file("junk.bin", string(keyBlock.Bytes))
	caBlock, _ := pem.Decode([]byte(readFile(t, f.ca)))
	caDER := file("ca.crt", string(caBlock.Bytes))
	encrypted := file("encrypted-key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}})))
	missing := filepath.Join(f.dir, "missing.pem")
	https := []string{"--etcd-endpoints", secureEndpoint}
	pair := func(cert, key string) []string {
		return append(https, "--etcd-certfile", cert, "--etcd-keyfile", key)
	}
	ca := func(path string) []string { return append(https, "--etcd-cafile", path) }

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // in stderr
	}{
		{"password twice", []string{"--etcd-username", "u", "--etcd-password", secret, "--etcd-password-file", pwFile}, nil,
			[]string{"--etcd-password and --etcd-password-file both given: give one"}},
		{"password from the environment and a file", []string{"--etcd-username", "u", "--etcd-password-file", pwFile}, map[string]string{"VTEPD_ETCD_PASSWORD": secret},
			[]string{"VTEPD_ETCD_PASSWORD (--etcd-password) and --etcd-password-file both given"}},
		{"password from flanneld's environment and a file", []string{"--etcd-username", "u", "--etcd-password-file", pwFile}, map[string]string{"FLANNELD_ETCD_PASSWORD": secret},
			[]string{"FLANNELD_ETCD_PASSWORD (--etcd-password) and --etcd-password-file both given"}},
		{"username without password", []string{"--etcd-username", "u"}, nil,
			[]string{"--etcd-username given without a password (--etcd-password-file or --etcd-password)"}},
		{"password without username", nil, map[string]string{"VTEPD_ETCD_PASSWORD": secret},
			[]string{"a password given without --etcd-username"}},
		{"password file missing", []string{"--etcd-username", "u", "--etcd-password-file", missing}, nil,
			[]string{"--etcd-password-file " + missing + ": file does not exist"}},
		{"password file from the environment, missing", []string{"--etcd-username", "u"}, map[string]string{"VTEPD_ETCD_PASSWORD_FILE": missing},
			[]string{"--etcd-password-file " + missing + ": file does not exist"}},
		{"password file empty", []string{"--etcd-username", "u", "--etcd-password-file", emptyPw}, nil,
			[]string{"--etcd-password-file " + emptyPw + " is empty"}},
		{"certfile without keyfile", append(https, "--etcd-certfile", f.cert), nil,
			[]string{"etcdclient: TLS: --etcd-certfile " + f.cert + " given without --etcd-keyfile"}},
		{"keyfile without certfile", append(https, "--etcd-keyfile", f.key), nil,
			[]string{"etcdclient: TLS: --etcd-keyfile " + f.key + " given without --etcd-certfile"}},
		{"CA file with http endpoints", []string{"--etcd-cafile", f.ca}, nil,
			[]string{"--etcd-cafile given, but endpoint http://127.0.0.1:2379 is http://", "use https://"}},
		{"certificate with http endpoints", []string{"--etcd-endpoints", "http://e:2379", "--etcd-certfile", f.cert, "--etcd-keyfile", f.key}, nil,
			[]string{"--etcd-certfile given, but endpoint http://e:2379 is http://"}},
		{"http and https endpoints", []string{"--etcd-endpoints", "http://a:2379,https://b:2379"}, nil,
			[]string{"--etcd-endpoints mix http (http://a:2379) and https (https://b:2379)"}},
		{"CA file missing", ca(missing), nil, []string{"etcdclient: TLS: --etcd-cafile " + missing + ": file does not exist"}},
		{"CA file a directory", ca(f.dir), nil, []string{"--etcd-cafile " + f.dir + ": is a directory"}},
		{"CA file not PEM", ca(garbage), nil, []string{"--etcd-cafile " + garbage + ": no PEM certificates found"}},
		{"CA file holds a key", ca(f.key), nil, []string{"--etcd-cafile " + f.key + ": no PEM certificates found, only PRIVATE KEY"}},
		{"CA file in DER", ca(caDER), nil, []string{"--etcd-cafile " + caDER + ": no PEM certificates found: the certificate is in DER form"}},
		{"CA file of binary junk", ca(junk), nil, []string{"--etcd-cafile " + junk + ": no PEM certificates found"}},
		{"CA expired", ca(f.expiredCA), nil, []string{"--etcd-cafile " + f.expiredCA + `: certificate "CN=expired CA" expired at `}},
		{"key of another certificate", pair(f.cert, f.otherKey), nil,
			[]string{"etcdclient: TLS: --etcd-certfile " + f.cert + " / --etcd-keyfile " + f.otherKey + ": private key does not match certificate"}},
		{"client certificate expired", pair(f.expiredCert, f.expKey), nil,
			[]string{"--etcd-certfile " + f.expiredCert + `: certificate "CN=expired" expired at ` + time.Now().Add(-24*time.Hour).UTC().Format("2006-01-02T15"), "ago)"}},
		{"client certificate not valid yet", pair(f.futureCert, f.futureKey), nil,
			[]string{"--etcd-certfile " + f.futureCert + `: certificate "CN=future" is not valid until `, "is the clock right?"}},
		{"certificate file missing", pair(missing, f.key), nil, []string{"--etcd-certfile " + missing + ": file does not exist"}},
		{"certificate file not PEM", pair(garbage, f.key), nil, []string{"--etcd-certfile " + garbage + ": no PEM certificates found"}},
		{"key file missing", pair(f.cert, missing), nil, []string{"--etcd-keyfile " + missing + ": file does not exist"}},
		{"key file holds a certificate", pair(f.cert, f.cert), nil, []string{"--etcd-keyfile " + f.cert + ": no PEM private key found, only CERTIFICATE"}},
		{"key file encrypted", pair(f.cert, encrypted), nil, []string{"--etcd-keyfile " + encrypted + ": the private key is encrypted"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != 2 || stdout != "" {
				t.Errorf("vtepd run %v exits %d, stdout %q; want 2 and nothing; stderr:\n%s", tt.args, code, stdout, stderr)
			}
			if !strings.HasPrefix(stderr, "vtepd run: ") {
				t.Errorf("stderr does not start with the command:\n%s", stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, secret) {
				t.Errorf("stderr holds the password:\n%s", stderr)
			}
			if strings.Contains(stderr, "vtepd starting") {
				t.Errorf("the agent was started:\n%s", stderr)
			}
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEtcdFlagsEveryCommand: leases and monitor share the flags and their
// checks with run.
func TestEtcdFlagsEveryCommand(t *testing.T) {
	clearEnv(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, cmd := range []string{"leases", "monitor"} {
		code, _, stderr := vtepd(t, cmd, "--etcd-endpoints", secureEndpoint, "--etcd-cafile", missing)
		if want := "vtepd " + cmd + ": etcdclient: TLS: --etcd-cafile " + missing + ": file does not exist"; code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("vtepd %s exits %d, stderr:\n%s\nwant 2 and %q", cmd, code, stderr, want)
		}
	}
}

func TestEtcdFlagsConfig(t *testing.T) {
	f := newTLSFiles(t)
	parse := func(t *testing.T, args ...string) (etcdclient.Config, error) {
		t.Helper()
		fs := newFlagSet("test", io.Discard)
		var e etcdFlags
		e.register(fs)
		if err := parseFlags(fs, args); err != nil {
			t.Fatal(err)
		}
		return e.config()
	}

	t.Run("TLS and a password from the environment", func(t *testing.T) {
		clearEnv(t)
		t.Setenv("VTEPD_ETCD_PASSWORD", "from-env")
		t.Setenv("VTEPD_ETCD_CAFILE", f.ca)
		cfg, err := parse(t, "--etcd-endpoints", secureEndpoint+",https://192.0.2.2:2379", "--etcd-certfile", f.cert, "--etcd-keyfile", f.key, "--etcd-username", "vtepd")
		if err != nil {
			t.Fatal(err)
		}
		want := etcdclient.Config{Endpoints: []string{secureEndpoint, "https://192.0.2.2:2379"}, CAFile: f.ca, CertFile: f.cert, KeyFile: f.key, Username: "vtepd", Password: "from-env"}
		if cfg.CAFile != want.CAFile || cfg.CertFile != want.CertFile || cfg.KeyFile != want.KeyFile || cfg.Username != want.Username ||
			string(cfg.Password) != string(want.Password) || strings.Join(cfg.Endpoints, ",") != strings.Join(want.Endpoints, ",") || cfg.PasswordFile != "" {
			t.Errorf("config %+v (password %q)\nwant %+v (password %q)", cfg, string(cfg.Password), want, string(want.Password))
		}
	})

	t.Run("a certificate another CA signed passes: only etcd can refuse it", func(t *testing.T) {
		clearEnv(t)
		if _, err := parse(t, "--etcd-endpoints", secureEndpoint, "--etcd-cafile", f.ca, "--etcd-certfile", f.otherCert, "--etcd-keyfile", f.otherKey); err != nil {
			t.Error(err)
		}
	})

	t.Run("https without a CA file: the system's roots", func(t *testing.T) {
		clearEnv(t)
		if _, err := parse(t, "--etcd-endpoints", secureEndpoint); err != nil {
			t.Error(err)
		}
	})

	t.Run("password file", func(t *testing.T) {
		clearEnv(t)
		pw := filepath.Join(f.dir, "pw")
		write(t, pw, "from-file\n")
		cfg, err := parse(t, "--etcd-username", "vtepd", "--etcd-password-file", pw)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.PasswordFile != pw || cfg.Password != "" {
			t.Errorf("config %+v, want the password file and no password", cfg)
		}
	})
}

func TestEtcdFlagsHelp(t *testing.T) {
	clearEnv(t)
	_, _, stderr := vtepd(t, "run", "-h")
	for _, want := range []string{"-etcd-cafile", "-etcd-certfile", "-etcd-keyfile", "-etcd-username", "-etcd-password-file",
		"prefer --etcd-password-file or VTEPD_ETCD_PASSWORD"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("vtepd run -h does not mention %q", want)
		}
	}
}
