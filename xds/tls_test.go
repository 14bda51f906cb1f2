package xds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/spiffetest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sluice-mesh/sluice/xds"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sluice test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM certificate and key for a leaf with the given serial.
func (ca *testCA) issue(t *testing.T, serial int64, server bool) (certPEM, keyPEM []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// mTLS: a client with a certificate signed by the CA syncs; one without a
// certificate is refused; a rotated client certificate is used on the next
// connection without restarting the client.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, ca.pem)
	srvCert, srvKey := ca.issue(t, 100, true)
	serverPair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)

	var mu sync.Mutex
	var seen []int64 // client certificate serials, in handshake order
	serverTLS := &tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			mu.Lock()
			seen = append(seen, chains[0][0].SerialNumber.Int64())
			mu.Unlock()
			return nil
		},
	}
	cp := newControlPlane(t, grpc.Creds(credentials.NewTLS(serverTLS)))
	v1 := mesh{services: []svc{webV1}}
	cp.set("1", v1)

	// Without a client certificate: refused, nothing applied.
	noCert, err := xds.TLSConfig(xds.TLSFiles{CA: caFile})
	if err != nil {
		t.Fatal(err)
	}
	anon := &recorder{}
	anonClient := startClient(t, cp.addr, xds.ModeDelta, anon, func(o *xds.Options) { o.TLS = noCert })

	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	c1, k1 := ca.issue(t, 1, false)
	writeFile(t, certFile, c1)
	writeFile(t, keyFile, k1)
	withCert, err := xds.TLSConfig(xds.TLSFiles{CA: caFile, Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.TLS = withCert })
	waitApplied(t, rec, v1.summary())

	waitFor(t, "the certificate-less client to fail", func() bool { return anonClient.Status().Reconnects >= 2 })
	if _, n := anon.last(); n != 0 {
		t.Error("a client without a certificate got a state")
	}

	// Rotate the client certificate, restart the server to force a new
	// handshake, and check the new certificate was presented.
	c2, k2 := ca.issue(t, 2, false)
	time.Sleep(10 * time.Millisecond) // a distinct modification time
	writeFile(t, certFile, c2)
	writeFile(t, keyFile, k2)
	cp.restart()
	v2 := mesh{services: []svc{webV2}}
	cp.set("2", v2)
	waitApplied(t, rec, v2.summary())
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 || seen[len(seen)-1] != 2 {
		t.Errorf("client certificate serials presented: %v; want the rotated one (2) last", seen)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	writeFile(t, notPEM, []byte("not a certificate"))
	for _, tc := range []struct {
		name string
		f    xds.TLSFiles
	}{
		{"no CA", xds.TLSFiles{}},
		{"CA without PEM", xds.TLSFiles{CA: notPEM}},
		{"cert without key", xds.TLSFiles{CA: notPEM, Cert: notPEM}},
		{"missing CA file", xds.TLSFiles{CA: filepath.Join(dir, "absent.pem")}},
	} {
		if _, err := xds.TLSConfig(tc.f); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

// mTLS with SPIFFE: the client authenticates with the SVID a Workload API
// gives it and accepts the control plane by its SPIFFE ID. A rotated SVID
// does not drop the stream, and is presented at the next handshake.
func TestSPIFFEControlPlane(t *testing.T) {
	const agentID, cpID = "spiffe://example.org/ns/sluice/sa/agent", "spiffe://example.org/ns/sluice/sa/controlplane"
	ca := spiffetest.NewCA(t, "example.org")
	api := spiffetest.StartWorkloadAPI(t, ca, agentID)
	var mu sync.Mutex
	var seen []int64 // client SVID serials, in handshake order
	serverTLS := ca.ServerTLS(t, cpID, func(c *x509.Certificate) {
		mu.Lock()
		seen = append(seen, c.SerialNumber.Int64())
		mu.Unlock()
	})
	last := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return 0
		}
		return seen[len(seen)-1]
	}
	cp := newControlPlane(t, grpc.Creds(credentials.NewTLS(serverTLS)))
	v1 := mesh{services: []svc{webV1}}
	cp.set("1", v1)

	src, err := identity.OpenSVIDSource(context.Background(), api.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cfg, err := src.ClientTLS(cpID)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c := startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.TLS = cfg })
	waitApplied(t, rec, v1.summary())
	if first := api.Current().Certificates[0].SerialNumber.Int64(); last() != first {
		t.Fatalf("client presented serial %d, the Workload API's SVID is %d", last(), first)
	}

	// Rotation: the stream stays, changes still arrive.
	rotated := api.Rotate().Certificates[0].SerialNumber.Int64()
	waitFor(t, "the source to hold the rotated SVID", func() bool {
		s, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
		return err == nil && len(s.Certificate) > 0 && mustParse(t, s.Certificate[0]).SerialNumber.Int64() == rotated
	})
	v2 := mesh{services: []svc{webV2}}
	cp.set("2", v2)
	waitApplied(t, rec, v2.summary())
	if st := c.Status(); st.Reconnects != 0 {
		t.Errorf("the rotation cost %d reconnects: %s", st.Reconnects, st.LastError)
	}

	// The next handshake presents the rotated SVID.
	cp.restart()
	cp.set("3", v1)
	waitApplied(t, rec, v1.summary())
	if last() != rotated {
		t.Errorf("after a reconnect the client presented serial %d, want the rotated %d", last(), rotated)
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
