// Package testca is a throwaway certificate authority for tests of TLS to
// etcd: the lab's etcd (test/netns) and the unit tests of the etcd client
// and of vtepd's flags take their certificates from it. It is for tests
// only: keys are fresh, in memory, and never protected.
package testca

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"time"
)

// CA is a throwaway certificate authority, for tests of TLS to etcd.
type CA struct {
	Cert *x509.Certificate
	key  crypto.Signer
}

// New returns a CA with a fresh key, valid from an hour ago for a day.
func New(name string) (*CA, error) {
	cert, key, err := newCert(CertSpec{Name: name, CA: true}, nil)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, key: key}, nil
}

// CertPEM returns the CA's certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// CertSpec says what certificate CA.Issue makes.
type CertSpec struct {
	Name string
	// IPs make a server certificate for those addresses; without any, the
	// certificate is a client's.
	IPs []netip.Addr
	// CA makes a CA's certificate instead.
	CA bool
	// NotBefore and NotAfter default to an hour ago and a day from now.
	NotBefore, NotAfter time.Time
}

// Issue makes a certificate signed by ca and returns it and its key, in
// PEM.
func (ca *CA) Issue(spec CertSpec) (certPEM, keyPEM []byte, err error) {
	cert, key, err := newCert(spec, ca)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// newCert makes a certificate with a fresh key, signed by ca, or by itself
// if ca is nil.
func newCert(spec CertSpec, ca *CA) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testca: key for %s: %w", spec.Name, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.Name},
		NotBefore:    cmp.Or(spec.NotBefore, now.Add(-time.Hour)),
		NotAfter:     cmp.Or(spec.NotAfter, now.Add(24*time.Hour)),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	switch {
	case spec.CA:
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage, tmpl.BasicConstraintsValid, tmpl.IsCA = nil, true, true
	case len(spec.IPs) > 0:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, a := range spec.IPs {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
		}
	}
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.Cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, fmt.Errorf("testca: certificate for %s: %w", spec.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("testca: certificate for %s: %w", spec.Name, err)
	}
	return cert, key, nil
}

// IssueFiles is Issue, writing the certificate and key to certFile and
// keyFile.
func (ca *CA) IssueFiles(spec CertSpec, certFile, keyFile string) error {
	certPEM, keyPEM, err := ca.Issue(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return fmt.Errorf("testca: %w", err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("testca: %w", err)
	}
	return nil
}
