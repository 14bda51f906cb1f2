// Package spiffetest provides what tests of SPIFFE-authenticated
// connections need: a certificate authority for one trust domain that
// issues X.509 SVIDs, and an in-process SPIFFE Workload API server that
// hands an SVID to its clients and rotates it on demand.
package spiffetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// CA is the certificate authority of one trust domain.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	key         crypto.Signer
	serial      atomic.Int64
}

// NewCA makes a CA for the trust domain td (e.g. "example.org").
func NewCA(tb testing.TB, td string) *CA {
	tb.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"spiffetest"}, CommonName: td},
		URIs:                  []*url.URL{trust.ID().URL()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert, key := sign(tb, tmpl, nil, nil)
	ca := &CA{TrustDomain: trust, Cert: cert, key: key}
	ca.serial.Store(100)
	return ca
}

// Bundle is the CA's trust bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
}

// SVID issues an X.509 SVID for id (a SPIFFE ID in the CA's trust domain),
// valid for client and server use, with a new serial number each time.
func (ca *CA) SVID(tb testing.TB, id string) *x509svid.SVID {
	tb.Helper()
	sid := spiffeid.RequireFromString(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		URIs:         []*url.URL{sid.URL()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	cert, key := sign(tb, tmpl, ca.Cert, ca.key)
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// sign makes a key and a certificate from tmpl for it, signed by parent
// (self-signed when parent is nil).
func sign(tb testing.TB, tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

// ServerTLS is the TLS configuration of a server holding an SVID for id
// that requires clients to present an SVID of the trust domain, and calls
// seen (if not nil) with each client's certificate.
func (ca *CA) ServerTLS(tb testing.TB, id string, seen func(*x509.Certificate)) *tls.Config {
	tb.Helper()
	authorize := tlsconfig.AuthorizeMemberOf(ca.TrustDomain)
	if seen != nil {
		authorize = func(id spiffeid.ID, chains [][]*x509.Certificate) error {
			seen(chains[0][0])
			return tlsconfig.AuthorizeMemberOf(ca.TrustDomain)(id, chains)
		}
	}
	return tlsconfig.MTLSServerConfig(ca.SVID(tb, id), ca.Bundle(), authorize)
}

// WorkloadAPI is an in-process SPIFFE Workload API server on a Unix
// socket. It serves X.509 SVIDs only.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	Addr string // unix:///path, for workloadapi.WithAddr

	ca *CA
	id string
	tb testing.TB

	mu      sync.Mutex
	current *x509svid.SVID
	update  chan struct{} // closed and replaced at each rotation
}

// StartWorkloadAPI serves SVIDs for id issued by ca until the test ends.
func StartWorkloadAPI(tb testing.TB, ca *CA, id string) *WorkloadAPI {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "workload.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	w := &WorkloadAPI{Addr: "unix://" + path, ca: ca, id: id, tb: tb, current: ca.SVID(tb, id), update: make(chan struct{})}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, w)
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	return w
}

// Current is the SVID served now.
func (w *WorkloadAPI) Current() *x509svid.SVID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// Rotate issues a new SVID for the same ID, sends it to the connected
// clients, and returns it.
func (w *WorkloadAPI) Rotate() *x509svid.SVID {
	s := w.ca.SVID(w.tb, w.id)
	w.mu.Lock()
	w.current = s
	close(w.update)
	w.update = make(chan struct{})
	w.mu.Unlock()
	return s
}

// FetchX509SVID streams the current SVID, and each rotated one.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if md, _ := metadata.FromIncomingContext(stream.Context()); len(md.Get("workload.spiffe.io")) == 0 {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	for {
		w.mu.Lock()
		s, next := w.current, w.update
		w.mu.Unlock()
		var chain []byte
		for _, c := range s.Certificates {
			chain = append(chain, c.Raw...)
		}
		key, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId: s.ID.String(), X509Svid: chain, X509SvidKey: key, Bundle: w.ca.Cert.Raw,
		}}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-next:
		case <-stream.Context().Done():
			return nil
		}
	}
}
