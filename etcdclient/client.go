package etcdclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Config says how to reach etcd and how vtepd proves who it is. Errors
// about it name each setting by its flag (flannel's names: --etcd-cafile,
// --etcd-certfile...): that is what the operator wrote.
type Config struct {
	Endpoints []string
	// CAFile holds the certificates that verify etcd's servers. Without it,
	// https endpoints are verified against the system's roots, as etcd's
	// own client does.
	CAFile string
	// CertFile and KeyFile are the client certificate for an etcd that
	// requires one; both or neither. They are read again at every TLS
	// handshake, so a renewed certificate is used from the next
	// reconnection on, without a restart.
	CertFile, KeyFile string
	// Username and Password log in to an etcd with authentication enabled.
	// PasswordFile, instead of Password, holds the password (one trailing
	// newline dropped); it is read when the client is made.
	Username     string
	Password     Secret
	PasswordFile string
}

// Secret is a password. It prints and marshals as "[redacted]": a config
// that reaches a log line or an error through %v or an encoder leaks
// nothing. Only string(s) gives the value.
type Secret string

const redacted = "[redacted]"

// Format covers every verb of fmt (%v, %s, %q, %#v, %x...), String and
// MarshalText what else asks: zap.Stringer, encoding/json, zap.Any.
func (Secret) Format(f fmt.State, _ rune)   { fmt.Fprint(f, redacted) }
func (Secret) String() string               { return redacted }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Check validates the configuration without connecting: the endpoints'
// schemes, the settings that go in pairs, and every TLS file, read and
// parsed, so that a mistake is reported at start with the file and why.
func (c Config) Check() error {
	_, err := c.load(zap.NewNop())
	return err
}

// ErrAuth is etcd refusing vtepd's username and password. Retrying
// cannot fix it: the operator must, so vtepd exits rather than loop.
var ErrAuth = errors.New("etcd refused the login")

// New returns a client that reconnects on its own. gRPC's default
// reconnect backoff grows to two minutes; capped at five seconds, an etcd
// member that comes back is used again within seconds.
//
// Without a username it returns at once and connects when first used.
// With one, etcd's client logs in before it returns, and fails if etcd
// does not answer within five seconds: Dial waits that out.
func New(cfg Config, log *zap.Logger) (*clientv3.Client, error) {
	ccfg, err := cfg.clientConfig(log)
	if err != nil {
		return nil, err
	}
	return newClient(cfg, ccfg)
}

// Dial is New for an etcd that may be away: while etcd does
// not answer the login it retries, logging why, until ctx ends. A rejected
// password ends it at once: no retry fixes that.
func Dial(ctx context.Context, cfg Config, log *zap.Logger) (*clientv3.Client, error) {
	ccfg, err := cfg.clientConfig(log)
	if err != nil {
		return nil, err
	}
	wait := time.Second
	for {
		type result struct {
			c   *clientv3.Client
			err error
		}
		done := make(chan result, 1)
		go func() {
			c, err := newClient(cfg, ccfg)
			done <- result{c, err}
		}()
		var r result
		select {
		case r = <-done:
		case <-ctx.Done():
			// The attempt ends within the dial timeout; its client, if
			// any, is nobody's.
			go func() {
				if r := <-done; r.c != nil {
					r.c.Close()
				}
			}()
			return nil, ctx.Err()
		}
		if r.err == nil || !unreachable(r.err) {
			return r.c, r.err
		}
		log.Warn("etcd did not answer the login; retrying", zap.Strings("endpoints", cfg.Endpoints),
			zap.String("username", cfg.Username), zap.Error(r.err), zap.Duration("backoff", wait))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// unreachable says whether the client failed for want of an answer, which
// waiting may cure, rather than for an answer (a rejected password).
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}

func newClient(cfg Config, ccfg clientv3.Config) (*clientv3.Client, error) {
	c, err := clientv3.New(ccfg)
	switch {
	case err == nil:
		return c, nil
	case cfg.Username != "" && errors.Is(rpctypes.Error(err), rpctypes.ErrAuthFailed):
		return nil, fmt.Errorf("etcdclient: %v: authentication failed for --etcd-username %q: wrong password, or no such user: %w: %w",
			cfg.Endpoints, cfg.Username, ErrAuth, err)
	case cfg.Username != "":
		return nil, fmt.Errorf("etcdclient: client for %v, logging in as %q: %w", cfg.Endpoints, cfg.Username, err)
	default:
		return nil, fmt.Errorf("etcdclient: client for %v: %w", cfg.Endpoints, err)
	}
}

// clientConfig checks cfg, loads its files and logs what is dubious about
// it, then gives etcd's client configuration.
func (cfg Config) clientConfig(log *zap.Logger) (clientv3.Config, error) {
	l, err := cfg.load(log)
	if err != nil {
		return clientv3.Config{}, err
	}
	for _, w := range l.warnings {
		log.Warn(w)
	}
	bo := backoff.DefaultConfig
	bo.MaxDelay = 5 * time.Second
	opts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second})}
	if l.tls != nil {
		// The same credentials etcd's client would make from l.tls (every
		// endpoint is https: load made sure), and they report failed
		// handshakes. Dial options given here come after the client's own.
		r := &tlsReporter{caFile: cfg.CAFile, certFile: cfg.CertFile, log: log, last: map[string]reported{}}
		opts = append(opts, grpc.WithTransportCredentials(tlsCreds{credentials.NewTLS(l.tls), r}))
	}
	return clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         l.tls,
		Username:    cfg.Username,
		Password:    l.password,
		// The client's own logs are about connections; ours say what they
		// mean for the overlay. Keep its warnings, drop its chatter.
		Logger: log.Named("etcd").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel),
			zap.WrapCore(func(c zapcore.Core) zapcore.Core { return quietTokenRefresh{c} })),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		DialOptions:          opts,
	}, nil
}

// loaded is an Config with its files read.
type loaded struct {
	// tls is nil when there is neither a TLS file nor an https endpoint.
	tls      *tls.Config
	password string
	// warnings are for what works but looks wrong.
	warnings []string
}

// load checks cfg and reads its files.
func (cfg Config) load(log *zap.Logger) (loaded, error) {
	var l loaded
	if len(cfg.Endpoints) == 0 {
		return l, errors.New("etcdclient: --etcd-endpoints is empty")
	}
	password := string(cfg.Password)
	if cfg.PasswordFile != "" {
		if password != "" {
			return l, errors.New("etcdclient: --etcd-password and --etcd-password-file both given; give one")
		}
		b, err := readFile("--etcd-password-file", cfg.PasswordFile)
		if err != nil {
			return l, fmt.Errorf("etcdclient: %w", err)
		}
		// Editors and `echo` end a file with a newline; a password never
		// does, while other white space may be part of it.
		password = string(b)
		if p, ok := strings.CutSuffix(password, "\r\n"); ok {
			password = p
		} else {
			password = strings.TrimSuffix(password, "\n")
		}
		if password == "" {
			return l, fmt.Errorf("etcdclient: --etcd-password-file %s is empty", cfg.PasswordFile)
		}
	}
	switch {
	case cfg.Username != "" && password == "":
		return l, errors.New("etcdclient: --etcd-username given without a password (--etcd-password-file or --etcd-password)")
	case cfg.Username == "" && password != "":
		return l, errors.New("etcdclient: a password given without --etcd-username")
	case cfg.CertFile != "" && cfg.KeyFile == "":
		return l, fmt.Errorf("etcdclient: TLS: --etcd-certfile %s given without --etcd-keyfile", cfg.CertFile)
	case cfg.KeyFile != "" && cfg.CertFile == "":
		return l, fmt.Errorf("etcdclient: TLS: --etcd-keyfile %s given without --etcd-certfile", cfg.KeyFile)
	}
	l.password = password
	var plain, secure []string
	for _, ep := range cfg.Endpoints {
		if scheme, _, _ := strings.Cut(ep, "://"); scheme == "http" {
			plain = append(plain, ep)
		} else if scheme == "https" {
			secure = append(secure, ep)
		}
	}
	if len(plain) > 0 && len(secure) > 0 {
		// etcd's client takes the first endpoint's scheme for every
		// connection: half of these would not be what they say.
		return l, fmt.Errorf("etcdclient: --etcd-endpoints mix http (%s) and https (%s): make them all https",
			strings.Join(plain, ","), strings.Join(secure, ","))
	}
	var files []string
	for _, f := range []struct{ flag, path string }{{"--etcd-cafile", cfg.CAFile}, {"--etcd-certfile", cfg.CertFile}} {
		if f.path != "" {
			files = append(files, f.flag)
		}
	}
	if len(files) > 0 && len(plain) > 0 {
		// etcd's client (and so flanneld) would ignore the files and talk
		// in clear, with the password if there is one. An operator who
		// gave a CA or a certificate meant TLS: a refusal to start costs
		// one edit, a silent downgrade the security they thought they had.
		return l, fmt.Errorf("etcdclient: TLS: %s given, but endpoint %s is http://, which would ignore it and talk in clear: use https://",
			strings.Join(files, " and "), plain[0])
	}
	if cfg.Username != "" && len(plain) > 0 {
		l.warnings = append(l.warnings, "etcd password is sent in clear: the endpoints are http://")
	}
	if len(files) == 0 && len(secure) == 0 {
		return l, nil
	}

	// RootCAs nil: the system's roots, as etcd's client would use for an
	// https endpoint and no files.
	l.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pool, err := loadCAs(cfg.CAFile)
		if err != nil {
			return loaded{}, fmt.Errorf("etcdclient: TLS: %w", err)
		}
		l.tls.RootCAs = pool
	}
	if cfg.CertFile != "" {
		cert, warnings, err := loadKeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return loaded{}, fmt.Errorf("etcdclient: TLS: %w", err)
		}
		l.warnings = append(l.warnings, warnings...)
		cc := &clientCert{certFile: cfg.CertFile, keyFile: cfg.KeyFile, log: log, cert: &cert}
		l.tls.GetClientCertificate = cc.get
	}
	return l, nil
}

// quietTokenRefresh drops etcd's client's warning that a login token had
// expired: the client logs in again and retries at once, as designed, and
// with etcd's five-minute tokens that is every call after a quiet spell (a
// lease renewal, once a day). A login that fails is still logged.
type quietTokenRefresh struct{ zapcore.Core }

func (q quietTokenRefresh) With(fields []zapcore.Field) zapcore.Core {
	return quietTokenRefresh{q.Core.With(fields)}
}

func (q quietTokenRefresh) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	// Asking the wrapped core keeps its level and sampling; writing goes
	// through Write below.
	if q.Core.Check(e, nil) == nil {
		return ce
	}
	return ce.AddCore(e, q)
}

func (q quietTokenRefresh) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if e.Message == "retrying of unary invoker failed" {
		for _, f := range fields {
			if err, ok := f.Interface.(error); ok && errors.Is(rpctypes.Error(err), rpctypes.ErrInvalidAuthToken) {
				return nil
			}
		}
	}
	return q.Core.Write(e, fields)
}
