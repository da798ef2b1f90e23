package etcdclient

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// The TLS side of the etcd client: loading the CA, certificate and key
// files with errors that name the file and why, reloading the client
// certificate at each handshake, and reporting refused handshakes.

// tlsCreds are TLS credentials that report why a handshake with etcd
// failed. etcd's client retries quietly and a call waits for a connection,
// so without them a wrong CA or a refused certificate looks like a vtepd
// waiting for nothing.
type tlsCreds struct {
	credentials.TransportCredentials
	r *tlsReporter
}

func (c tlsCreds) ClientHandshake(ctx context.Context, endpoint string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, endpoint, raw)
	if err != nil {
		if ctx.Err() == nil {
			c.r.report(endpoint, err)
		}
		return nil, nil, err
	}
	return &alertConn{Conn: conn, r: c.r, endpoint: endpoint}, info, nil
}

func (c tlsCreds) Clone() credentials.TransportCredentials {
	return tlsCreds{c.TransportCredentials.Clone(), c.r}
}

// alertConn reports a TLS alert from etcd. With TLS 1.3 the client's
// handshake is over before the server has looked at the client's
// certificate: a refusal arrives as an alert, after the handshake.
type alertConn struct {
	net.Conn
	r        *tlsReporter
	endpoint string
	heard    atomic.Bool // a read has returned data
}

func (c *alertConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.heard.Store(true)
	}
	if isAlert(err) {
		c.r.report(c.endpoint, err)
	}
	return n, err
}

func (c *alertConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && !c.heard.Load() {
		// etcd hung up before it said anything: its reason, an alert,
		// likely waits unread, and gRPC closes the connection on this
		// error. Read it now or never; the connection is lost anyway.
		c.Conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, rerr := c.Conn.Read(make([]byte, 1)); isAlert(rerr) {
			c.r.report(c.endpoint, rerr)
		}
	}
	return n, err
}

// isAlert says whether err is a TLS alert the other side sent.
func isAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// tlsReporter logs failed handshakes with a hint at the cause: once per
// endpoint and error, and again each minute while it lasts.
type tlsReporter struct {
	caFile, certFile string
	log              *zap.Logger

	mu   sync.Mutex
	last map[string]reported // by endpoint
}

type reported struct {
	err string
	at  time.Time
}

func (r *tlsReporter) report(endpoint string, err error) {
	now := time.Now()
	r.mu.Lock()
	last, ok := r.last[endpoint]
	if ok && last.err == err.Error() && now.Sub(last.at) < time.Minute {
		r.mu.Unlock()
		return
	}
	r.last[endpoint] = reported{err.Error(), now}
	r.mu.Unlock()
	r.log.Warn("TLS handshake with etcd failed; retrying", zap.String("endpoint", endpoint), zap.String("hint", r.hint(err)), zap.Error(err))
}

// hint says what is likely wrong, in the operator's terms.
func (r *tlsReporter) hint(err error) string {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var remote *net.OpError
	switch {
	case errors.As(err, &unknown) && r.caFile != "":
		return fmt.Sprintf("etcd's certificate is not signed by a CA in --etcd-cafile %s", r.caFile)
	case errors.As(err, &unknown):
		return "etcd's certificate is not signed by a CA this system trusts: give etcd's CA with --etcd-cafile"
	case errors.As(err, &hostname):
		return "etcd's certificate is not for the address in --etcd-endpoints: use one the certificate names"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "etcd's certificate has expired or is not valid yet: renew it, or check the clocks"
	case !errors.As(err, &remote) || remote.Op != "remote error" || !strings.Contains(remote.Err.Error(), "certificate"):
		return ""
	case r.certFile == "":
		return "etcd refused the connection: it requires a client certificate; give --etcd-certfile and --etcd-keyfile"
	case strings.Contains(remote.Err.Error(), "expired"):
		return fmt.Sprintf("etcd refused the client certificate --etcd-certfile %s: it says it has expired", r.certFile)
	}
	return fmt.Sprintf("etcd refused the client certificate --etcd-certfile %s: is it signed by a CA in etcd's --trusted-ca-file?", r.certFile)
}

// clientCert hands the client certificate to each TLS handshake, read
// again from the files each time.
type clientCert struct {
	certFile, keyFile string
	log               *zap.Logger

	mu   sync.Mutex
	cert *tls.Certificate // the last that loaded
}

func (c *clientCert) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cert, _, err := loadKeyPair(c.certFile, c.keyFile)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		// etcd will say no to an expired certificate; the old one at least
		// keeps working until it expires, and the log says what is wrong.
		c.log.Warn("etcd client certificate cannot be used; offering the one loaded before", zap.Error(fmt.Errorf("etcdclient: TLS: %w", err)))
		return c.cert, nil
	}
	c.cert = &cert
	return c.cert, nil
}

func loadCAs(path string) (*x509.CertPool, error) {
	certs, err := readCerts("--etcd-cafile", path)
	if err != nil {
		return nil, err
	}
	// An expired certificate in a bundle is harmless while another one
	// verifies; a file where none is valid verifies nothing.
	pool := x509.NewCertPool()
	var errs []error
	for _, c := range certs {
		if err := checkValidity(c); err != nil {
			errs = append(errs, err)
			continue
		}
		pool.AddCert(c)
	}
	if len(errs) == len(certs) {
		return nil, fmt.Errorf("--etcd-cafile %s: %w", path, errs[0])
	}
	return pool, nil
}

// loadKeyPair loads the client certificate and key, saying which file is
// wrong and why. The warnings are for a certificate etcd will likely
// refuse, though some etcd setups would not look.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, []string, error) {
	certs, err := readCerts("--etcd-certfile", certFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyPEM, err := readFile("--etcd-keyfile", keyFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--etcd-keyfile %s: %w", keyFile, err)
	}
	if pub, ok := certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return tls.Certificate{}, nil, fmt.Errorf("--etcd-certfile %s / --etcd-keyfile %s: private key does not match certificate", certFile, keyFile)
	}
	if err := checkValidity(certs[0]); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("--etcd-certfile %s: %w", certFile, err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	var warnings []string
	if eku := certs[0].ExtKeyUsage; len(eku) > 0 && !slices.Contains(eku, x509.ExtKeyUsageClientAuth) && !slices.Contains(eku, x509.ExtKeyUsageAny) {
		// Go's etcd refuses it, but only an etcd that asks for client
		// certificates looks: flanneld starts with it, so vtepd does too.
		warnings = append(warnings, fmt.Sprintf("etcd client certificate --etcd-certfile %s is not for client authentication (its extended key usage lacks clientAuth): an etcd that requires client certificates will refuse it", certFile))
	}
	return cert, warnings, nil
}

func checkValidity(c *x509.Certificate) error {
	now := time.Now()
	switch {
	case now.After(c.NotAfter):
		return fmt.Errorf("certificate %q expired at %s (%s ago)", c.Subject, c.NotAfter.UTC().Format(time.RFC3339), now.Sub(c.NotAfter).Round(time.Second))
	case now.Before(c.NotBefore):
		return fmt.Errorf("certificate %q is not valid until %s (%s from now; is the clock right?)", c.Subject, c.NotBefore.UTC().Format(time.RFC3339), c.NotBefore.Sub(now).Round(time.Second))
	}
	return nil
}

// readFile reads a file named by a flag. The error names the flag and the
// path once, then why.
func readFile(flag, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		if errors.Is(err, fs.ErrNotExist) {
			err = fs.ErrNotExist // "file does not exist" rather than ENOENT's wording
		}
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return b, nil
}

// readCerts reads the PEM certificates of a file named by a flag.
func readCerts(flag, path string) ([]*x509.Certificate, error) {
	data, err := readFile(flag, path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	var others []string
	for _, b := range pemBlocks(data) {
		if b.Type != "CERTIFICATE" {
			others = append(others, b.Type)
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: certificate %d: %w", flag, path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	switch _, derErr := x509.ParseCertificate(data); {
	case len(others) > 0:
		return nil, fmt.Errorf("%s %s: no PEM certificates found, only %s", flag, path, strings.Join(others, ", "))
	case derErr == nil:
		return nil, fmt.Errorf("%s %s: no PEM certificates found: the certificate is in DER form; convert it with openssl x509 -inform der", flag, path)
	}
	return nil, fmt.Errorf("%s %s: no PEM certificates found", flag, path)
}

// parseKey parses the first PEM private key in data.
func parseKey(data []byte) (crypto.Signer, error) {
	var others []string
	for _, b := range pemBlocks(data) {
		switch {
		case b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED"):
			return nil, errors.New("the private key is encrypted; vtepd needs it unencrypted")
		case !strings.HasSuffix(b.Type, "PRIVATE KEY"):
			others = append(others, b.Type)
			continue
		}
		if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: not an RSA, ECDSA or Ed25519 private key: %w", b.Type, err)
		}
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("%s: a %T cannot sign", b.Type, k)
	}
	if len(others) > 0 {
		return nil, fmt.Errorf("no PEM private key found, only %s", strings.Join(others, ", "))
	}
	return nil, errors.New("no PEM private key found")
}

// pemBlocks returns the PEM blocks in data, skipping what lies between.
func pemBlocks(data []byte) []*pem.Block {
	var out []*pem.Block
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		out = append(out, b)
	}
	return out
}
