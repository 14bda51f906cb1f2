package xds

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSFiles names the PEM files for TLS to the control plane.
type TLSFiles struct {
	CA         string // required: CA bundle that signs the control plane's certificate
	Cert, Key  string // optional: client certificate and key, for mTLS; both or neither
	ServerName string // optional: name to verify in the server certificate; default: the host of the target
}

// TLSConfig builds a client TLS configuration from files. The client
// certificate is re-read when its files change, so a rotated certificate is
// used from the next handshake on without a restart.
func TLSConfig(f TLSFiles) (*tls.Config, error) {
	if f.CA == "" {
		return nil, errors.New("xds tls: a CA file is required")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("xds tls: give both a certificate and a key file, or neither")
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("xds tls: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("xds tls: %s holds no PEM certificate", f.CA)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: f.ServerName, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		kp := &keyPair{cert: f.Cert, key: f.Key}
		if _, err := kp.get(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get() }
	}
	return cfg, nil
}

// keyPair caches a certificate and reloads it when either file's
// modification time changes.
type keyPair struct {
	cert, key string

	mu      sync.Mutex
	loaded  *tls.Certificate // guarded by mu
	modCert time.Time        // guarded by mu
	modKey  time.Time        // guarded by mu
}

func (k *keyPair) get() (*tls.Certificate, error) {
	mc, err1 := modTime(k.cert)
	mk, err2 := modTime(k.key)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := errors.Join(err1, err2); err != nil {
		if k.loaded != nil {
			return k.loaded, nil // keep the last good pair while files are being replaced
		}
		return nil, fmt.Errorf("xds tls: %w", err)
	}
	if k.loaded != nil && mc.Equal(k.modCert) && mk.Equal(k.modKey) {
		return k.loaded, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.loaded != nil {
			return k.loaded, nil
		}
		return nil, fmt.Errorf("xds tls: load key pair: %w", err)
	}
	k.loaded, k.modCert, k.modKey = &c, mc, mk
	return k.loaded, nil
}

func modTime(path string) (time.Time, error) {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}, err
	}
	return st.ModTime(), nil
}
