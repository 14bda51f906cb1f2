package controlplane_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/xds/controlplane"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func serialNumber(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a leaf certificate for 127.0.0.1 with the given usage.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "sluice test CA")
	s := start(t, meshFile, controlplane.Options{TLS: &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, "control plane", x509.ExtKeyUsageServerAuth)},
		ClientCAs:    ca.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}})

	t.Run("client certificate", func(t *testing.T) {
		st := openSotW(t, dial(t, s.addr, credentials.NewTLS(&tls.Config{
			RootCAs:      ca.pool,
			Certificates: []tls.Certificate{ca.issue(t, "agent", x509.ExtKeyUsageClientAuth)},
		})))
		st.subscribe(clusterType)
		sameNames(t, "clusters", names(t, st.next(clusterType).Resources), claNames...)
	})

	other := newCA(t, "another CA")
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"no client certificate", nil},
		{"certificate of another CA", []tls.Certificate{other.issue(t, "intruder", x509.ExtKeyUsageClientAuth)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s.addr, credentials.NewTLS(&tls.Config{RootCAs: ca.pool, Certificates: tc.certs}))
			ctx := testContext(t)
			// With TLS 1.3 the client finishes its handshake before the
			// server checks its certificate, so the refusal may show on the
			// first send or receive rather than on opening the stream.
			st, err := c.StreamAggregatedResources(ctx)
			if err == nil {
				err = st.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: clusterType})
			}
			if err == nil {
				var resp *discoverygrpc.DiscoveryResponse
				resp, err = st.Recv()
				if err == nil {
					t.Fatalf("refused client got %d resources", len(resp.Resources))
				}
			}
			if code := status.Code(err); code != codes.Unavailable {
				t.Errorf("refused client error %v (code %v), want Unavailable", err, code)
			}
			if ctx.Err() != nil {
				t.Errorf("refusal took until the test's deadline")
			}
		})
	}

	t.Run("plaintext client", func(t *testing.T) {
		c := dial(t, s.addr, nil)
		st, err := c.StreamAggregatedResources(testContext(t))
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("plaintext client error %v, want Unavailable", err)
		}
	})
}
