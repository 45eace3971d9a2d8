/* utf8.c: incremental, fail-fast UTF-8 validation.
 *
 * A table-driven DFA in the spirit of Bjoern Hoehrmann's decoder (written
 * afresh here, validation only, no code point output). Every byte maps to one
 * of 12 classes. The states encode exactly which continuation bytes may come
 * next, which is what makes the check fail fast: E0 must be followed by
 * A0..BF (else overlong), ED by 80..9F (else a surrogate), F0 by 90..BF (else
 * overlong), F4 by 80..8F (else > U+10FFFF), so each of those is refused on
 * the second byte, and C0, C1, F5..FF (which never start a valid sequence)
 * are refused at once.
 *
 * The transition table is stored "shift style": for each class, one 64-bit
 * word holds the next state of all 9 states, 6 bits each, and a state is its
 * own bit offset in that word. A step is then next = row[class[b]] >> state,
 * where the two loads do not depend on the state: the loop-carried chain is a
 * single shift instead of a dependent table load per byte.
 *
 * Text is mostly ASCII, so at a code point boundary we skip ASCII runs 8 (and
 * 32) bytes at a time by testing the top bit of every byte in a word. */
#include "ws/utf8.h"

#include <string.h>

#include "core/common.h"

/* States; the value kept is the state index times 6 (its bit offset). */
enum { ACC, REJ, C1, C2, E0, ED, C3, F0, F4 };
/*  ACC  at a boundary (must be 0: gw_utf8.state == 0 means "boundary")
 *  REJ  invalid, sticky
 *  C1   one more continuation byte, any 80..BF
 *  C2   two more, any
 *  E0   after E0: A0..BF, then one more
 *  ED   after ED: 80..9F, then one more
 *  C3   after F1..F3: three more, any
 *  F0   after F0: 90..BF, then two more
 *  F4   after F4: 80..8F, then two more */
#define S(x) (6u * (x))
/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 C2..DF, 5 E0,
 * 6 E1..EC and EE..EF, 7 ED, 8 F0, 9 F1..F3, 10 F4, 11 never valid. */
static const uint8_t byte_class[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 00..0F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 10..1F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 20..2F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 30..3F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 40..4F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 50..5F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 60..6F */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 70..7F */
     1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1, /* 80..8F */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, /* 90..9F */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* A0..AF */
     3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3, /* B0..BF */
    11, 11,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* C0..CF */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* D0..DF */
     5,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  7,  6,  6, /* E0..EF */
     8,  9,  9,  9, 10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, /* F0..FF */
};

/* One row per byte class: the next state from each of the 9 states. */
#define ROW(acc, rej, c1, c2, e0, ed, c3, f0, f4)                                                                     \
    ((uint64_t)S(acc) << S(ACC) | (uint64_t)S(rej) << S(REJ) | (uint64_t)S(c1) << S(C1) |                             \
     (uint64_t)S(c2) << S(C2) | (uint64_t)S(e0) << S(E0) | (uint64_t)S(ed) << S(ED) | (uint64_t)S(c3) << S(C3) |     \
     (uint64_t)S(f0) << S(F0) | (uint64_t)S(f4) << S(F4))
#define R REJ
/* clang-format off */
static const uint64_t class_row[12] = {
    /*                from: ACC  REJ  C1   C2   E0   ED   C3   F0   F4 */
    /* 0  ASCII   */ ROW(ACC, R,   R,   R,   R,   R,   R,   R,   R),
    /* 1  80..8F  */ ROW(R,   R,   ACC, C1,  R,   C1,  C2,  R,   C2),
    /* 2  90..9F  */ ROW(R,   R,   ACC, C1,  R,   C1,  C2,  C2,  R),
    /* 3  A0..BF  */ ROW(R,   R,   ACC, C1,  C1,  R,   C2,  C2,  R),
    /* 4  C2..DF  */ ROW(C1,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 5  E0      */ ROW(E0,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 6  E1..EF  */ ROW(C2,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 7  ED      */ ROW(ED,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 8  F0      */ ROW(F0,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 9  F1..F3  */ ROW(C3,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 10 F4      */ ROW(F4,  R,   R,   R,   R,   R,   R,   R,   R),
    /* 11 bad     */ ROW(R,   R,   R,   R,   R,   R,   R,   R,   R),
};
/* clang-format on */
#undef R

#define HIGH_BITS 0x8080808080808080ull

/* Number of leading (in memory order) ASCII bytes of a word whose
 * top-bit mask hi is non-zero. */
static inline size_t ascii_prefix(uint64_t hi)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (size_t)__builtin_clzll(hi) >> 3;
#else
    return (size_t)__builtin_ctzll(hi) >> 3;
#endif
}

int gw_utf8_feed(gw_utf8 *v, const uint8_t *p, size_t n)
{
    uint64_t s = v->state;
    const uint8_t *end = p + n;

    if (gw_unlikely(s == S(REJ)))
        return GW_ERR;
    while (p < end) {
        if ((s & 63) == S(ACC) && *p < 0x80) {
            /* ASCII fast path: only entered at a boundary on an ASCII byte,
             * so runs of multi-byte characters do not pay for word loads. */
            while ((size_t)(end - p) >= 32) {
                uint64_t a, b, c, d;
                memcpy(&a, p, 8);
                memcpy(&b, p + 8, 8);
                memcpy(&c, p + 16, 8);
                memcpy(&d, p + 24, 8);
                if ((a | b | c | d) & HIGH_BITS)
                    break;
                p += 32;
            }
            while ((size_t)(end - p) >= 8) {
                uint64_t a;
                memcpy(&a, p, 8);
                uint64_t hi = a & HIGH_BITS;
                if (hi) {
                    p += ascii_prefix(hi);
                    break;
                }
                p += 8;
            }
            if (p == end)
                break;
        }
        /* Only the low 6 bits of s are the state; the higher bits are what
         * is left of the row, and the shift count ignores them, so the
         * loop-carried chain is the shift alone. */
        s = class_row[byte_class[*p++]] >> (s & 63);
        if (gw_unlikely((s & 63) == S(REJ))) {
            v->state = S(REJ);
            return GW_ERR;
        }
    }
    v->state = (uint32_t)(s & 63);
    return GW_OK;
}

int gw_utf8_valid(const uint8_t *p, size_t n)
{
    gw_utf8 v;
    gw_utf8_init(&v);
    return gw_utf8_feed(&v, p, n) == GW_OK && gw_utf8_complete(&v);
}
