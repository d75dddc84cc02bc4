// Package stream is the agent's /events stream: a hub that fans the agent's
// lines out to clients, each with its own filter, without ever holding up
// the tracer, and the authorization in front of it (stream tokens: auth.go).
package stream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/lru"
)

// The stream's credentials (deploy/README.md, "Threat model").
//
// A caller never shows an agent its own credentials. kdrop tail asks the API
// server for a token of service account Account (TokenRequest, which needs
// "create" on serviceaccounts/token for that account: ClusterRole
// kdrop-viewer), with Audience as its only audience, bound to the agent's
// Node object and valid for TokenLifetime. The API server refuses such a
// token (its audience is not the API server's), and so does every other
// agent (bound to another node): whoever reads it at the agent, a proxy or
// a compromised node, can open a stream on that node only, until it
// expires. The agent reads the token's claims first (no API call for
// anything that is not such a token, or lives longer than
// MaxTokenLifetime), then checks it with a TokenReview for Audience, and
// ends the stream when the token expires: a viewer whose binding is
// removed loses the stream within MaxTokenLifetime.
const (
	// Audience is the one audience of stream tokens.
	Audience = "kdrop.dev/stream"
	// DefaultAccount is the service account whose tokens open streams, in
	// the agents' namespace. It is bound to no role: its tokens carry no
	// rights at the API server, whatever their audience.
	DefaultAccount = "kdrop-stream"
	// TokenLifetime is how long the stream tokens kdrop tail asks for are
	// valid. A stream ends when its token expires, and tail reconnects with
	// a new one (a gap of milliseconds, said as any gap is).
	TokenLifetime = time.Hour
	// MaxTokenLifetime is the longest lifetime (exp - iat) the agent takes:
	// a token asked for by hand for a year is refused.
	MaxTokenLifetime = TokenLifetime + time.Minute
	// MaxStreamsPerToken bounds the streams one token holds at once, so
	// one caller cannot take every slot of --max-streams.
	MaxStreamsPerToken = 4
	// TokenHeader carries the token: the API server's pod proxy strips
	// Authorization after authenticating the caller.
	TokenHeader = "X-Kdrop-Authorization"
	// nodeNameExtra is where a TokenReview names the Node a token is bound
	// to (KEP-4193, GA in Kubernetes 1.33).
	nodeNameExtra = "authentication.kubernetes.io/node-name"
	authTTL       = 10 * time.Second
)

// Account is the service account whose tokens open streams.
type Account struct{ Namespace, Name string }

// Username is the account's name as the API server authenticates it.
func (a Account) Username() string { return "system:serviceaccount:" + a.Namespace + ":" + a.Name }

func (a Account) String() string { return a.Namespace + "/" + a.Name }

// RequestToken asks cs's API server for a stream token of acct bound to
// node (see Audience): the token and when it expires. The caller needs
// "create" on serviceaccounts/token for acct; a refusal is returned as the
// API server's error (apierrors.IsForbidden).
func RequestToken(ctx context.Context, cs kubernetes.Interface, acct Account, node string) (string, time.Time, error) {
	secs := int64(TokenLifetime / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(acct.Namespace).CreateToken(ctx, acct.Name, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{Audience}, ExpirationSeconds: &secs,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: node},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, err
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
}

// Authorizer lets through the callers that show a stream token for this
// agent's node.
type Authorizer struct {
	cs   kubernetes.Interface
	log  *zap.Logger
	acct Account
	node string
	mu   sync.Mutex
	// decisions are cached briefly per token so a reconnecting tail does
	// not cost an API call each time.
	cache map[[32]byte]authDecision
	// Reviews of new tokens are rate-limited: trusted for callers from an
	// address that showed a good token before (the API server's pod
	// proxy), limit for the others, so a flood from elsewhere never holds
	// up a viewer's reconnect through the API server.
	limit, trusted *rate.Limiter
	good           *lru.Cache       // addresses that showed a good token (at most maxTrusted)
	streams        map[[32]byte]int // open streams per token
	// Refused counts refusals by HTTP status (401, 403, 429, 503).
	Refused map[int]*atomic.Uint64
}

type authDecision struct {
	status int
	msg    string
	at     time.Time
	exp    time.Time // the token's expiry, when accepted
}

// RefusalCodes are the statuses Refused counts.
var RefusalCodes = []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusServiceUnavailable}

// NewAuthorizer checks tokens with cs's API server: they must be acct's,
// for Audience, bound to node.
func NewAuthorizer(cs kubernetes.Interface, acct Account, node string, log *zap.Logger) *Authorizer {
	a := &Authorizer{cs: cs, acct: acct, node: node, log: log, cache: map[[32]byte]authDecision{},
		limit: rate.NewLimiter(reviewRate, reviewBurst), trusted: rate.NewLimiter(reviewRate, reviewBurst),
		good: lru.New(maxTrusted), streams: map[[32]byte]int{}, Refused: map[int]*atomic.Uint64{}}
	for _, c := range RefusalCodes {
		a.Refused[c] = new(atomic.Uint64)
	}
	return a
}

// saNamespaceFile is where a pod finds its own namespace.
const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// OwnNamespace is the agent's namespace: $POD_NAMESPACE (the downward API,
// as deploy/ sets it), else the service account's, else "".
func OwnNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	b, _ := os.ReadFile(saNamespaceFile)
	return strings.TrimSpace(string(b))
}

func bearer(h string) string {
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// Wrap puts the authorization in front of next. The request next serves
// ends when the token expires.
func (a *Authorizer) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(status int, msg string) {
			a.Refused[status].Add(1)
			if status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			http.Error(w, msg, status)
		}
		token := bearer(r.Header.Get(TokenHeader))
		if token == "" {
			refuse(http.StatusUnauthorized, "no stream token in "+TokenHeader+": kdrop tail gets one from the API server (a TokenRequest for service account "+a.acct.String()+", audience "+Audience+", bound to node "+a.node+"); never send your own credentials")
			return
		}
		remote, _, _ := net.SplitHostPort(r.RemoteAddr)
		key := sha256.Sum256([]byte(token))
		d := a.decide(r.Context(), token, key, remote)
		if d.status != http.StatusOK {
			refuse(d.status, d.msg)
			return
		}
		a.mu.Lock()
		if a.streams[key] >= MaxStreamsPerToken {
			a.mu.Unlock()
			refuse(http.StatusTooManyRequests, fmt.Sprintf("this stream token already holds %d streams, the most one token may", MaxStreamsPerToken))
			return
		}
		a.streams[key]++
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			if a.streams[key]--; a.streams[key] <= 0 {
				delete(a.streams, key)
			}
			a.mu.Unlock()
		}()
		a.log.Debug("stream client authorized", zap.String("remote", r.RemoteAddr), zap.Time("until", d.exp))
		ctx, cancel := context.WithDeadline(r.Context(), d.exp)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// decide is the answer for token (whose hash is key) from remote.
func (a *Authorizer) decide(ctx context.Context, token string, key [32]byte, remote string) authDecision {
	if a.acct.Namespace == "" || a.node == "" {
		return authDecision{status: http.StatusServiceUnavailable, msg: "this agent does not know its namespace or node, so it cannot check stream tokens: set POD_NAMESPACE and NODE_NAME (deploy/ does, with the downward API)"}
	}
	// What the token says of itself, checked before any API call: most
	// of what is not a stream token for this node costs nothing.
	exp, err := a.claims(token)
	if err != nil {
		return authDecision{status: http.StatusUnauthorized, msg: "not a stream token for this agent: " + err.Error()}
	}
	a.mu.Lock()
	d, ok := a.cache[key]
	a.mu.Unlock()
	lim := a.limit
	if _, trusted := a.good.Get(remote); trusted {
		lim = a.trusted
	}
	if ok && time.Since(d.at) < authTTL {
		return d
	}
	// Reviews of tokens not seen lately are rate-limited by the agent
	// itself: forged tokens must not flood the API server, nor hold up
	// real users' reviews.
	if !lim.Allow() {
		return authDecision{status: http.StatusTooManyRequests, msg: "too many new stream tokens to check with the API server just now: retry in a second"}
	}
	rctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	d = a.review(rctx, token)
	d.at, d.exp = time.Now(), exp
	if d.status != http.StatusServiceUnavailable { // refusals cached too: a negative cache
		a.remember(key, d)
	}
	if d.status == http.StatusOK {
		a.good.Add(remote, nil)
	}
	return d
}

// maxTrusted bounds the addresses remembered as having shown good tokens
// (the least recently used forgotten first).
const maxTrusted = 16

// claims checks what a stream token says of itself (a JWT's payload; its
// signature is the TokenReview's business): audience, subject, the node
// it is bound to, and its lifetime. It returns the token's expiry.
func (a *Authorizer) claims(token string) (time.Time, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(parts[1]) > 8<<10 {
		return time.Time{}, errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, errors.New("not a JWT")
	}
	var c struct {
		Aud  json.RawMessage `json:"aud"`
		Sub  string          `json:"sub"`
		Exp  int64           `json:"exp"`
		Iat  int64           `json:"iat"`
		Kube struct {
			Node struct {
				Name string `json:"name"`
			} `json:"node"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return time.Time{}, errors.New("not a JWT")
	}
	var auds []string
	if json.Unmarshal(c.Aud, &auds) != nil {
		var one string
		json.Unmarshal(c.Aud, &one)
		auds = []string{one}
	}
	exp, iat := time.Unix(c.Exp, 0), time.Unix(c.Iat, 0)
	switch {
	case !slices.Contains(auds, Audience):
		return time.Time{}, fmt.Errorf("its audience is not %s", Audience)
	case c.Sub != a.acct.Username():
		return time.Time{}, fmt.Errorf("it is not a token of service account %s", a.acct)
	case c.Kube.Node.Name != a.node:
		return time.Time{}, fmt.Errorf("it is bound to node %q, this agent runs on node %q: ask for a token bound to this node", c.Kube.Node.Name, a.node)
	case c.Exp == 0 || !time.Now().Before(exp):
		return time.Time{}, errors.New("it has expired")
	case c.Iat == 0 || exp.Sub(iat) > MaxTokenLifetime:
		return time.Time{}, fmt.Errorf("it lives %v, longer than the %v a stream token may", exp.Sub(iat), MaxTokenLifetime)
	}
	return exp, nil
}

// Reviews: at most reviewRate a second (burst reviewBurst) for tokens not
// cached, each bounded by reviewTimeout.
const (
	reviewRate    = 5
	reviewBurst   = 10
	reviewTimeout = 5 * time.Second
)

// authCacheMax bounds the decisions cached.
const authCacheMax = 1024

// remember caches d under key, after dropping expired decisions. At most
// authCacheMax are kept: past that, a new one is not cached, so a flood of
// distinct tokens costs reviews, not memory.
func (a *Authorizer) remember(key [32]byte, d authDecision) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, v := range a.cache {
		if time.Since(v.at) >= authTTL {
			delete(a.cache, k)
		}
	}
	if len(a.cache) < authCacheMax {
		a.cache[key] = d
	}
}

func (a *Authorizer) review(ctx context.Context, token string) authDecision {
	tr, err := a.cs.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}}}, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("TokenReview failed", zap.Error(err))
		return authDecision{status: http.StatusServiceUnavailable, msg: "cannot check the token with the API server: " + err.Error()}
	}
	st := tr.Status
	if !st.Authenticated || !slices.Contains(st.Audiences, Audience) {
		return authDecision{status: http.StatusUnauthorized, msg: "not a stream token (the API server does not accept it for audience " + Audience + "): " + st.Error}
	}
	// The API server's word on what the claims said.
	if st.User.Username != a.acct.Username() {
		return authDecision{status: http.StatusForbidden, msg: fmt.Sprintf("a token of %s: streams take tokens of service account %s only", st.User.Username, a.acct)}
	}
	if bound := st.User.Extra[nodeNameExtra]; len(bound) != 1 || bound[0] != a.node {
		return authDecision{status: http.StatusForbidden, msg: fmt.Sprintf("the token is bound to node %q, this agent runs on node %q: ask for a token bound to this node", strings.Join(bound, ","), a.node)}
	}
	return authDecision{status: http.StatusOK}
}
