package k8s

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Streaming lists.
//
// An informer's initial list (and any relist) asks the API server's watch
// cache for every object at once (resourceVersion=0, which ignores limit).
// client-go reads the whole response body into memory, decodes the whole
// list, and only then does the informer's transform strip each object: at
// 10,000 realistic pods that is a ~50 MB protobuf body plus ~150 MB of
// decoded pods alive at the same time, a 270 MiB RSS peak that the Go runtime
// is slow to give back, for ~20 MB of data kept.
//
// So the informers' list calls decode the protobuf response as it streams
// in: one item at a time is unmarshalled, transformed to its compact form and
// dropped. The request is the one client-go would send (same options, same
// resourceVersion semantics, served from the watch cache); only the decoding
// differs. A JSON answer (a server or proxy that ignores the protobuf Accept)
// falls back to decoding the whole body, then transforming.

// protoEncodingPrefix starts a Kubernetes protobuf message: "k8s" and 0, then
// a runtime.Unknown whose Raw field holds the list.
var protoEncodingPrefix = []byte{0x6b, 0x38, 0x73, 0x00}

// maxItemBytes bounds one encoded object (etcd's limit is 1.5 MiB by default).
const maxItemBytes = 64 << 20

// protoObject is a generated Kubernetes API type.
type protoObject interface {
	runtime.Object
	Unmarshal([]byte) error
}

// compactList is what the streaming list returns to the reflector: the
// list's metadata and the already transformed items.
type compactList struct {
	metav1.TypeMeta
	metav1.ListMeta
	Items []runtime.Object
}

func (l *compactList) DeepCopyObject() runtime.Object {
	c := *l
	l.ListMeta.DeepCopyInto(&c.ListMeta)
	c.Items = make([]runtime.Object, len(l.Items))
	for i, o := range l.Items {
		c.Items[i] = o.DeepCopyObject()
	}
	return &c
}

// listKind describes one resource for streamList.
type listKind struct {
	client    rest.Interface // the group-version's REST client
	resource  string         // "pods"
	kind      string         // "PodList", checked against the response
	newItem   func() protoObject
	newList   func() runtime.Object // for the JSON fallback
	transform cache.TransformFunc
}

// streamList lists k.resource in all namespaces with opts, decoding and
// transforming the items one at a time.
func streamList(ctx context.Context, k listKind, opts metav1.ListOptions) (runtime.Object, error) {
	body, err := k.client.Get().
		Resource(k.resource).
		VersionedParams(&opts, scheme.ParameterCodec).
		SetHeader("Accept", runtime.ContentTypeProtobuf+", "+runtime.ContentTypeJSON).
		Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return decodeList(body, k)
}

// decodeList decodes a list response body, protobuf or JSON.
func decodeList(body io.Reader, k listKind) (*compactList, error) {
	br := bufio.NewReaderSize(body, 64<<10)
	head, err := br.Peek(len(protoEncodingPrefix))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if !bytes.Equal(head, protoEncodingPrefix) {
		return decodeJSONList(br, k)
	}
	br.Discard(len(protoEncodingPrefix))
	out := &compactList{}
	r := &protoReader{r: br, n: -1}
	var buf []byte
	sawList := false
	for {
		field, wireType, err := r.tag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch {
		case field == 1 && wireType == 2: // runtime.Unknown.TypeMeta
			if buf, err = r.bytes(buf); err != nil {
				return nil, err
			}
			var tm runtime.TypeMeta
			if err := tm.Unmarshal(buf); err != nil {
				return nil, fmt.Errorf("decoding %s list type: %w", k.resource, err)
			}
			if k.kind != "" && tm.Kind != "" && tm.Kind != k.kind {
				return nil, fmt.Errorf("listing %s: got a %s, want a %s", k.resource, tm.Kind, k.kind)
			}
		case field == 2 && wireType == 2: // runtime.Unknown.Raw: the list
			n, err := r.uvarint()
			if err != nil {
				return nil, err
			}
			if buf, err = decodeListBody(&protoReader{r: r, n: int64(n)}, k, out, buf); err != nil {
				return nil, err
			}
			sawList = true
		default:
			if err := r.skip(wireType); err != nil {
				return nil, err
			}
		}
	}
	if !sawList {
		return nil, fmt.Errorf("listing %s: protobuf response without a list", k.resource)
	}
	return out, nil
}

// decodeListBody reads a XxxList message (ListMeta = 1, repeated items = 2).
func decodeListBody(r *protoReader, k listKind, out *compactList, buf []byte) ([]byte, error) {
	for r.n > 0 {
		field, wireType, err := r.tag()
		if err != nil {
			return buf, unexpected(err)
		}
		switch {
		case field == 1 && wireType == 2:
			if buf, err = r.bytes(buf); err != nil {
				return buf, unexpected(err)
			}
			if err := out.ListMeta.Unmarshal(buf); err != nil {
				return buf, fmt.Errorf("decoding %s list metadata: %w", k.resource, err)
			}
		case field == 2 && wireType == 2:
			if buf, err = r.bytes(buf); err != nil {
				return buf, unexpected(err)
			}
			item := k.newItem()
			if err := item.Unmarshal(buf); err != nil {
				return buf, fmt.Errorf("decoding a %s item: %w", k.resource, err)
			}
			obj, err := k.transform(item)
			if err != nil {
				return buf, err
			}
			ro, ok := obj.(runtime.Object)
			if !ok {
				return buf, fmt.Errorf("transform of %s returned %T", k.resource, obj)
			}
			out.Items = append(out.Items, ro)
		default:
			if err := r.skip(wireType); err != nil {
				return buf, unexpected(err)
			}
		}
	}
	out.Items = slices.Clip(out.Items)
	return buf, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodeJSONList is the fallback: the whole list decoded, then transformed.
func decodeJSONList(r io.Reader, k listKind) (*compactList, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	list := k.newList()
	if err := runtime.DecodeInto(scheme.Codecs.UniversalDeserializer(), data, list); err != nil {
		return nil, fmt.Errorf("decoding %s list: %w", k.resource, err)
	}
	out := &compactList{}
	if lm, err := meta.ListAccessor(list); err == nil {
		out.ResourceVersion = lm.GetResourceVersion()
		out.Continue = lm.GetContinue()
		out.RemainingItemCount = lm.GetRemainingItemCount()
	}
	err = meta.EachListItem(list, func(o runtime.Object) error {
		t, err := k.transform(o)
		if err != nil {
			return err
		}
		ro, ok := t.(runtime.Object)
		if !ok {
			return fmt.Errorf("transform of %s returned %T", k.resource, t)
		}
		out.Items = append(out.Items, ro)
		return nil
	})
	return out, err
}

// protoReader reads protobuf wire format from r, at most n bytes (n < 0:
// unbounded).
type protoReader struct {
	r interface {
		io.Reader
		io.ByteReader
	}
	n int64
}

func (p *protoReader) ReadByte() (byte, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	b, err := p.r.ReadByte()
	if err == nil && p.n > 0 {
		p.n--
	}
	return b, err
}

func (p *protoReader) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if p.n > 0 && int64(len(b)) > p.n {
		b = b[:p.n]
	}
	n, err := p.r.Read(b)
	if p.n > 0 {
		p.n -= int64(n)
	}
	return n, err
}

func (p *protoReader) uvarint() (uint64, error) { return binary.ReadUvarint(p) }

func (p *protoReader) tag() (field uint64, wireType int, err error) {
	v, err := p.uvarint()
	if err != nil {
		return 0, 0, err
	}
	return v >> 3, int(v & 7), nil
}

// bytes reads a length-delimited field into buf (reused) and returns it.
func (p *protoReader) bytes(buf []byte) ([]byte, error) {
	n, err := p.uvarint()
	if err != nil {
		return buf, err
	}
	if n > maxItemBytes || (p.n >= 0 && int64(n) > p.n) {
		return buf, fmt.Errorf("protobuf field of %d bytes", n)
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(p, buf); err != nil {
		return buf, unexpected(err)
	}
	return buf, nil
}

func (p *protoReader) skip(wireType int) error {
	var n uint64
	switch wireType {
	case 0:
		_, err := p.uvarint()
		return err
	case 1:
		n = 8
	case 2:
		var err error
		if n, err = p.uvarint(); err != nil {
			return err
		}
	case 5:
		n = 4
	default:
		return fmt.Errorf("protobuf wire type %d", wireType)
	}
	_, err := io.CopyN(io.Discard, p, int64(n))
	return unexpected(err)
}

// The compact types are runtime.Objects so that they can be a list's items.

func (p *podInfo) GetObjectKind() schema.ObjectKind   { return schema.EmptyObjectKind }
func (s *svcInfo) GetObjectKind() schema.ObjectKind   { return schema.EmptyObjectKind }
func (s *sliceInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }
func (o *ownerInfo) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }
func (n *nsInfo) GetObjectKind() schema.ObjectKind    { return schema.EmptyObjectKind }

func (p *podInfo) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.ips, c.hostIPs, c.ports = slices.Clone(p.ips), slices.Clone(p.hostIPs), slices.Clone(p.ports)
	c.labels, c.namedPorts, c.probes = maps.Clone(p.labels), slices.Clone(p.namedPorts), slices.Clone(p.probes)
	return &c
}

func (s *svcInfo) DeepCopyObject() runtime.Object {
	c := *s
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.ips = slices.Clone(s.ips)
	return &c
}

func (s *sliceInfo) DeepCopyObject() runtime.Object {
	c := *s
	s.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.endpoints = make([]sliceEndpoint, len(s.endpoints))
	for i, e := range s.endpoints {
		c.endpoints[i] = sliceEndpoint{addrs: slices.Clone(e.addrs), pod: e.pod, ready: e.ready}
	}
	return &c
}

func (o *ownerInfo) DeepCopyObject() runtime.Object {
	c := *o
	o.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

func (n *nsInfo) DeepCopyObject() runtime.Object {
	c := *n
	n.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}
