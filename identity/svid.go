// Package identity holds what Sluice knows of workload identities: SPIFFE
// IDs, and the agent's own X.509 SVID from a SPIFFE Workload API.
package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// SVIDSource is the agent's X.509 SVID and trust bundle, kept current from
// a SPIFFE Workload API (a SPIRE agent's socket, for example): rotated
// SVIDs and bundles are picked up as the Workload API sends them.
type SVIDSource struct {
	src *workloadapi.X509Source
}

// DefaultSVIDWait is how long OpenSVIDSource waits for the first SVID.
const DefaultSVIDWait = 15 * time.Second

// OpenSVIDSource connects to the Workload API at addr (a socket path, or a
// unix:// or tcp:// address) and waits until it has sent an SVID, or until
// wait has passed.
func OpenSVIDSource(ctx context.Context, addr string, wait time.Duration) (*SVIDSource, error) {
	if addr == "" {
		return nil, errors.New("spiffe: no Workload API address")
	}
	if !strings.Contains(addr, "://") {
		addr = "unix://" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("spiffe: no X.509 SVID from the Workload API at %s within %v: %w", addr, wait, err)
		}
		return nil, fmt.Errorf("spiffe: Workload API at %s: %w", addr, err)
	}
	return &SVIDSource{src: src}, nil
}

// ID is the SPIFFE ID of the current SVID.
func (s *SVIDSource) ID() (spiffeid.ID, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, err
	}
	return svid.ID, nil
}

// ClientTLS is a TLS configuration for connecting to a server with mutual
// TLS: the client presents the current SVID, and accepts the server if its
// SVID is server (a SPIFFE ID, "spiffe://example.org/ns/mesh/sa/xds"), or
// belongs to the trust domain server names ("spiffe://example.org"). Each
// handshake uses the SVID and bundle current at that moment.
func (s *SVIDSource) ClientTLS(server string) (*tls.Config, error) {
	authorize, err := Authorizer(server)
	if err != nil {
		return nil, err
	}
	return tlsconfig.MTLSClientConfig(s.src, s.src, authorize), nil
}

// Authorizer accepts the peer whose SVID has the SPIFFE ID want, or, if want
// names only a trust domain, any member of it.
func Authorizer(want string) (tlsconfig.Authorizer, error) {
	id, err := spiffeid.FromString(want)
	if err != nil {
		return nil, fmt.Errorf("spiffe: %q is not a SPIFFE ID (spiffe://<trust-domain>[/<path>]): %w", want, err)
	}
	if id.Path() == "" {
		return tlsconfig.AuthorizeMemberOf(id.TrustDomain()), nil
	}
	return tlsconfig.AuthorizeID(id), nil
}

// Close stops watching the Workload API.
func (s *SVIDSource) Close() error { return s.src.Close() }
