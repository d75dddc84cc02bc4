package stream

import (
	"crypto/sha256"
	"strconv"
	"testing"
	"time"
)

// The stream's authorization cache keeps at most authCacheMax decisions,
// expired ones dropped first.
func TestAuthCacheBounded(t *testing.T) {
	a := NewAuthorizer(nil, Account{}, "", nil)
	fresh := authDecision{status: 200, at: time.Now()}
	for i := range authCacheMax + 10 {
		a.remember(sha256.Sum256([]byte(strconv.Itoa(i))), fresh)
	}
	if len(a.cache) != authCacheMax {
		t.Errorf("%d decisions cached, want the cap, %d", len(a.cache), authCacheMax)
	}
	for k := range a.cache {
		d := a.cache[k]
		d.at = time.Now().Add(-authTTL)
		a.cache[k] = d
	}
	a.remember(sha256.Sum256([]byte("new")), fresh)
	if len(a.cache) != 1 {
		t.Errorf("%d decisions cached after the others expired, want 1", len(a.cache))
	}
}
