package l7

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// isH2CUpgrade reports whether h asks to upgrade to h2c (RFC 7540, 3.2).
func isH2CUpgrade(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Upgrade"], "h2c") &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "HTTP2-Settings")
}

// h2cSettings decodes the one HTTP2-Settings header of an upgrade request.
func h2cSettings(h http.Header) ([]byte, error) {
	vs := h["Http2-Settings"]
	if len(vs) != 1 {
		return nil, errors.New("h2c upgrade: want one HTTP2-Settings header")
	}
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(vs[0], "="))
}

// serveH2C switches r's connection to HTTP/2 and serves it there, r as
// its stream 1. r's body, at most maxReplayBody long, is read first, as the
// switch requires.
func (p *Proxy) serveH2C(w http.ResponseWriter, r *http.Request, settings []byte) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		x := &exchange{rec: RequestRecord{Method: r.Method, Authority: r.Host, Path: r.URL.EscapedPath(), Proto: r.Proto, Start: time.Now()}}
		x.rec.Err = err.Error()
		p.reply(w, r, x, http.StatusBadRequest, "reading the request body failed")
		p.finish(x)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not an HTTP/1.1 connection after all; serve it as it is.
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.serveHTTP(w, r)
		return
	}
	p.hijacked.add(conn)
	defer p.hijacked.done(conn)
	defer conn.Close()
	conn.SetDeadline(time.Time{})
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}

	up := r.Clone(r.Context())
	up.Proto, up.ProtoMajor, up.ProtoMinor = "HTTP/2.0", 2, 0
	for _, h := range []string{"Upgrade", "Http2-Settings", "Connection"} {
		up.Header.Del(h)
	}
	up.Close = false
	up.TransferEncoding = nil
	up.ContentLength = int64(len(body))
	up.Body = http.NoBody
	if len(body) > 0 {
		up.Body = io.NopCloser(bytes.NewReader(body))
	}
	p.h2.ServeConn(&bufferedConn{conn, brw.Reader}, &http2.ServeConnOpts{
		Context:        r.Context(),
		BaseConfig:     p.srv,
		Handler:        http.HandlerFunc(p.serveHTTP),
		UpgradeRequest: up,
		Settings:       settings,
	})
}

// bufferedConn is a hijacked connection whose first bytes (the client's
// HTTP/2 preface, perhaps) the server had already read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}
