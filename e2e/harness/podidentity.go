package harness

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// PodIdentityGCS plays Google's side of Workload Identity Federation in front of
// fake-gcs-server, for tests of gcs.tokenSource: podKSA (test code only; the shim uses the
// real oauth2 and storage clients, pointed here by its sts_url and gcs_endpoint):
//
//   - a Security Token Service (STSURL) that takes an RFC 8693 token exchange of a
//     Kubernetes service account token, checks the token with Review (the API server's
//     TokenReview, as a workload identity pool checks it against the cluster's issuer) and
//     the audience against Provider, and returns an access token of that service account
//     ("system:serviceaccount:<namespace>:<name>");
//   - an authorising front (Endpoint, the JSON API as the storage client calls it, and
//     its XML reads) that accepts a request only with an access token the STS issued,
//     whose service account is granted a prefix of the object or listing (as IAM
//     conditions or managed folders would), and proxies it to fake-gcs-server; every
//     request is logged with the principal that made it (Requests).
type PodIdentityGCS struct {
	// STSURL is the token exchange endpoint; Endpoint the storage JSON API endpoint.
	STSURL, Endpoint string
	// Provider is the STS audience the shim must send.
	Provider string

	proxy *httputil.ReverseProxy
	// mu guards review, grants, tokens and log.
	mu     sync.Mutex
	review func(token string) (user string, err error)
	grants map[string][]string // principal -> "bucket/prefix" granted
	tokens map[string]string   // access token -> principal
	log    []IdentityRequest
}

// IdentityRequest is one request the front saw: who (the principal of its access token;
// "" without one), what (method, bucket, object or listing prefix), and whether it passed.
type IdentityRequest struct {
	Principal, Method, Bucket, Object string
	Path                              string // the request's path and query
	Allowed                           bool
}

// StartPodIdentityGCS serves the STS and the front on ip (random ports), proxying to
// fake-gcs-server at gcsURL. Review must be set (SetReview) before the first exchange.
func StartPodIdentityGCS(t *testing.T, ip, gcsURL, provider string) (*PodIdentityGCS, error) {
	target, err := url.Parse(gcsURL)
	if err != nil {
		return nil, err
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	direct := proxy.Director
	proxy.Director = func(r *http.Request) {
		direct(r)
		r.Host = target.Host // fake-gcs-server serves XML reads on its public host only
	}
	p := &PodIdentityGCS{Provider: provider, proxy: proxy, grants: map[string][]string{}, tokens: map[string]string{}}
	for _, s := range []struct {
		h    http.HandlerFunc
		url  *string
		tail string
	}{{p.exchange, &p.STSURL, "/v1/token"}, {p.front, &p.Endpoint, "/storage/v1/"}} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: s.h}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		*s.url = "http://" + l.Addr().String() + s.tail
	}
	return p, nil
}

// SetReview sets how subject tokens are checked: it returns the token's user name.
func (p *PodIdentityGCS) SetReview(review func(token string) (string, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.review = review
}

// Grant lets principal use the objects of bucket below prefix.
func (p *PodIdentityGCS) Grant(principal, bucket, prefix string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.grants[principal] = append(p.grants[principal], bucket+"/"+prefix)
}

// Requests returns the front's log so far.
func (p *PodIdentityGCS) Requests() []IdentityRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]IdentityRequest(nil), p.log...)
}

// exchange answers an RFC 8693 token exchange as Google's STS does.
func (p *PodIdentityGCS) exchange(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		stsError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	switch {
	case r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
		stsError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type")
		return
	case r.PostForm.Get("audience") != p.Provider:
		stsError(w, http.StatusBadRequest, "invalid_target", "the audience is not this pool's provider")
		return
	case r.PostForm.Get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
		stsError(w, http.StatusBadRequest, "invalid_request", "subject_token_type")
		return
	}
	p.mu.Lock()
	review := p.review
	p.mu.Unlock()
	user, err := review(r.PostForm.Get("subject_token"))
	if err != nil {
		stsError(w, http.StatusUnauthorized, "invalid_grant", "the subject token is not valid: "+err.Error())
		return
	}
	b := make([]byte, 16)
	rand.Read(b)
	tok := "test-access-" + hex.EncodeToString(b)
	p.mu.Lock()
	p.tokens[tok] = user
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
		"token_type": "Bearer", "expires_in": 3600})
}

func stsError(w http.ResponseWriter, code int, kind, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": kind, "error_description": desc})
}

// front authorises a storage request and proxies it.
func (p *PodIdentityGCS) front(w http.ResponseWriter, r *http.Request) {
	principal := ""
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		p.mu.Lock()
		principal = p.tokens[tok]
		p.mu.Unlock()
	}
	bucket, object, err := target(r)
	entry := IdentityRequest{Principal: principal, Method: r.Method, Bucket: bucket, Object: object, Path: r.URL.String()}
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
	case principal == "":
		http.Error(w, `{"error":{"code":401,"message":"no valid access token"}}`, http.StatusUnauthorized)
	case !p.granted(principal, bucket, object):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"error":{"code":403,"message":"%s does not have storage access to %s/%s"}}`, principal, bucket, object)
	default:
		entry.Allowed = true
		p.proxy.ServeHTTP(w, r)
	}
	p.mu.Lock()
	p.log = append(p.log, entry)
	p.mu.Unlock()
}

func (p *PodIdentityGCS) granted(principal, bucket, object string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.grants[principal] {
		if strings.HasPrefix(bucket+"/"+object, g) {
			return true
		}
	}
	return false
}

// target returns the bucket and object (or listing prefix) of a storage request: JSON API
// paths (/storage/v1/b/B/o/O..., /upload/storage/v1/b/B/o with the name in the query or
// the multipart body's metadata, /download/storage/v1/b/B/o/O) and XML reads (/B/O).
// An upload's body is read and put back.
func target(r *http.Request) (bucket, object string, err error) {
	path := r.URL.EscapedPath()
	rest, jsonAPI := "", true
	switch {
	case strings.HasPrefix(path, "/storage/v1/b/"):
		rest = strings.TrimPrefix(path, "/storage/v1/b/")
	case strings.HasPrefix(path, "/upload/storage/v1/b/"):
		rest = strings.TrimPrefix(path, "/upload/storage/v1/b/")
	case strings.HasPrefix(path, "/download/storage/v1/b/"):
		rest = strings.TrimPrefix(path, "/download/storage/v1/b/")
	default:
		rest, jsonAPI = strings.TrimPrefix(path, "/"), false
	}
	bucket, rest, _ = strings.Cut(rest, "/")
	if !jsonAPI {
		object, err = url.PathUnescape(rest)
		return bucket, object, err
	}
	o, hasObject := strings.CutPrefix(rest, "o/")
	switch {
	case hasObject:
		o = strings.TrimSuffix(o, "/compose")
		object, err = url.PathUnescape(o)
	case r.URL.Query().Has("name"):
		object = r.URL.Query().Get("name")
	case rest == "o" && strings.HasPrefix(path, "/upload/"):
		object, err = uploadName(r)
	case rest == "o":
		object = r.URL.Query().Get("prefix") // a listing
	default:
		return "", "", fmt.Errorf("request %s %s: not an object request", r.Method, path)
	}
	return bucket, object, err
}

// uploadName reads the object name from a multipart upload's metadata part.
func uploadName(r *http.Request) (string, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return "", err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return "", fmt.Errorf("upload: %w", err)
	}
	part, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).NextPart()
	if err != nil {
		return "", fmt.Errorf("upload metadata: %w", err)
	}
	var meta struct{ Name string }
	if err := json.NewDecoder(part).Decode(&meta); err != nil || meta.Name == "" {
		return "", fmt.Errorf("upload metadata: no object name (%v)", err)
	}
	return meta.Name, nil
}
