// Vector-friendly exp for the softmax kernels.
//
// Every function here is plain, branch-free C++ (selects, integer bit tricks, no library calls), so
// that the loops calling it vectorise under -O3 -fno-trapping-math for whatever instruction set the
// including translation unit is compiled for. The functions live in an anonymous namespace: each
// per-ISA kernel file gets its own copy, and no weak symbol can leak an AVX-512 body into baseline code.
//
// Note: method. exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (Cody-Waite: ln 2 split in a
// short "hi" part, so n * hi is exact, and a "lo" correction). |r| <= ln(2)/2, where a polynomial is
// accurate to well under one ulp. n is rounded with the add-a-magic-constant trick, whose bits then
// hold n directly: 2^n is built in the integer domain without a float-to-int conversion (which has no
// AVX2 instruction for doubles).
//
// Note: domain and error (measured over every float in the domain, and 2*10^7 random doubles, against
// exp in higher precision, with and without FMA contraction):
//   exp_float:  x in [-87.33, 88]: max error 0.90 ulp (1.18 without FMA, as in the SSE2 build);
//               x < -87.33 (including -inf) gives +0 (results that would be subnormal are flushed);
//               NaN gives NaN; x > 88 is clamped to 88.
//   exp_double: x in [-708.39, 709]: max error 1.05 ulp (1.02 without FMA); x < -708.39 gives +0;
//               NaN gives NaN; x > 709 is clamped to 709.
// The kernels only ever call them with x <= 0 (x - row max), where neither can overflow. The
// exponentials the kernels write out (fast_exp) differ from them below log(FLT_MIN) and log(DBL_MIN),
// where they give the subnormal results (see the Note on exponentials written out).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

// Note: forced inlining. Every function here is forced inline: a loop can only be vectorised with
// the function's body in it, and GCC's inliner, within the budget of a large caller such as
// loss_tile, kept log_double out of line there and left the loop of a tile's per-row logs scalar
// (half of the time of a 1048576 x 2 loss with reduction="none").
#if defined(__GNUC__) || defined(__clang__)
#define FASTXENT_MATH inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FASTXENT_MATH __forceinline
#else
#define FASTXENT_MATH inline
#endif
// The same for a lambda, written after its parameter list; GCC left one loss_tile's gradient loop,
// in a lambda it kept out of line, scalar.
#if defined(__GNUC__) || defined(__clang__)
#define FASTXENT_INLINE_LAMBDA __attribute__((always_inline))
#else
#define FASTXENT_INLINE_LAMBDA
#endif

namespace fastxent {
namespace {

FASTXENT_MATH float bits_to_float(std::uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
FASTXENT_MATH std::uint32_t float_to_bits(float value) {
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}
FASTXENT_MATH double bits_to_double(std::uint64_t bits) {
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
FASTXENT_MATH std::uint64_t double_to_bits(double value) {
    std::uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

// exp(x) for x already clamped to [lowest, highest] (see the Note above). The magic constant holds the
// exponent bias as well: after the add, the float's low mantissa bits are n + 127, and shifting them
// into the exponent field gives 2^n in one integer instruction.
//
// Note: the polynomial's form. exp(r) is 1 + r * q(r), q of degree 5, evaluated by Horner's rule, the
// last step a fused multiply-add where there is one. The earlier form, 1 + r + r^2 * p(r) with p of
// degree 5, took two more instructions a vector (r * r and the added r), and the loops that store
// exponentials (a gradient, a softmax) are bound by the arithmetic: such a loop alone took 0.85 of the
// time with AVX2. Paired against the earlier form in one process: the float32 gradient of 4096 x 1000
// rows in 0.91 of the time on one thread (0.92 on two), of 2048 x 32000 in 0.93 (0.99 on two, bound
// by memory), softmax of 4096 x 1000 in 0.95; SSE2 0.90-0.98. Measured over every float in
// [-87.33, 88]: max error 0.90 ulp with FMA (1.02 before), 1.18 without (0.99 before), mean 0.065 ulp
// either way.
FASTXENT_MATH float exp_float_clamped(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;    // 355/512: n * ln2_hi is exact for |n| < 2^15
    const float ln2_lo = -2.12194440e-4f;
    const float magic = 12583039.0f;      // 1.5 * 2^23 + 127
    const float shifted = x * log2e + magic;
    const float n = shifted - magic;
    float r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    // exp(r) = 1 + r * q(r), q of degree 5 with q(0) = 1 and q'(0) = 1/2 (the Taylor series' first two
    // terms, exact in float), the rest fitted for the least largest relative error on |r| <= ln(2)/2
    // (3.6e-9). See the Note on the polynomial's form below.
    float q = 1.386375050e-3f;
    q = q * r + 8.367471397e-3f;
    q = q * r + 4.166723788e-2f;
    q = q * r + 1.666653454e-1f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    const float exp_r = q * r + 1.0f;
    return exp_r * bits_to_float(float_to_bits(shifted) << 23);
}

FASTXENT_MATH double exp_double_clamped(double x) {
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 0.693145751953125;      // 22713/32768: n * ln2_hi exact for |n| < 2^37
    const double ln2_lo = 1.42860682030941723212e-6;
    const double magic = 6755399441056767.0;  // 1.5 * 2^52 + 1023
    const double shifted = x * log2e + magic;
    const double n = shifted - magic;
    double r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    // Minimax polynomial for (exp(r) - 1 - r) / r^2 on |r| <= ln(2)/2, of degree 9, with the least
    // largest relative error of exp(r) (3.6e-18; computed by a Remez exchange in 50-digit arithmetic).
    // It replaced the Taylor series to degree 13 (5e-18), two multiply-adds a value more: paired against
    // it in one process, float64 losses, gradients and softmaxes took 0.88-0.95 of the time (AVX2, one
    // thread), 0.85-0.87 with SSE2. Max error 1.05 ulp (1.00 before), 1.02 without FMA (0.98 before).
    double p = 2.500037449473218e-08;
    p = p * r + 2.763023125068758e-07;
    p = p * r + 2.7557585378678426e-06;
    p = p * r + 2.480149314259166e-05;
    p = p * r + 1.9841269507695918e-04;
    p = p * r + 1.388888894359275e-03;
    p = p * r + 8.333333333493948e-03;
    p = p * r + 4.166666666653028e-02;
    p = p * r + 1.6666666666666413e-01;
    p = p * r + 5.000000000000011e-01;
    const double exp_r = (p * r) * r + r + 1.0;
    return exp_r * bits_to_double(double_to_bits(shifted) << 52);
}

constexpr float kExpFloatLowest = -87.33654475f;         // log(FLT_MIN): below it the result is subnormal
constexpr float kExpFloatHighest = 88.0f;                // keeps n <= 127
constexpr double kExpDoubleLowest = -708.3964185322641;  // log(DBL_MIN)
constexpr double kExpDoubleHighest = 709.0;              // keeps n <= 1023

FASTXENT_MATH float exp_float(float x) {
    float clamped = x < kExpFloatLowest ? kExpFloatLowest : x;
    clamped = clamped > kExpFloatHighest ? kExpFloatHighest : clamped;
    const float result = exp_float_clamped(clamped);
    return x < kExpFloatLowest ? 0.0f : result;
}

FASTXENT_MATH double exp_double(double x) {
    double clamped = x < kExpDoubleLowest ? kExpDoubleLowest : x;
    clamped = clamped > kExpDoubleHighest ? kExpDoubleHighest : clamped;
    const double result = exp_double_clamped(clamped);
    return x < kExpDoubleLowest ? 0.0 : result;
}

// Note: exp inside a sum of exponentials. The kernels sum exp(x - max), whose arguments are <= 0 (or
// NaN) and whose sum has a term exp(0) = 1. There, an argument below log(DBL_MIN) (a -inf mask
// included) may give a tiny positive value (at most 2.3e-308) instead of 0: it cannot change the sum,
// and it saves the upper clamp and the final select. Everything written out uses exp_double.
// `lowest` is log(DBL_MIN) (see the Note on the lower clamp below).
FASTXENT_MATH double exp_double_in_sum(double x, double lowest) {
    return exp_double_clamped(x < lowest ? lowest : x);
}

// Note: log_double. x = 2^k * m with m in [sqrt(1/2), sqrt(2)), found by shifting the bits so that the
// exponent changes at sqrt(1/2); then log(m) = log((1 + s) / (1 - s)) with s = (m - 1) / (m + 1), an odd
// series in s whose tail is a degree-7 polynomial in s^2 (the classic fdlibm reduction). k is turned
// into a double with integer operations only (2^52 + k), so that AVX2 can vectorise it. Measured max
// error 0.83 ulp over 10^7 random positive doubles. log(0) = -inf, log(+inf) = +inf, NaN gives NaN;
// subnormal and negative x are outside the domain (the kernels pass sums of exponentials, >= 1).
FASTXENT_MATH double log_double(double x) {
    const std::uint64_t sqrt_half_bits = 0x3fe6a09e667f3bcdULL;
    const std::uint64_t bits = double_to_bits(x) + (0x3ff0000000000000ULL - sqrt_half_bits);
    const std::uint64_t exponent = bits >> 52;  // k + 1023
    const double k = bits_to_double(exponent | 0x4330000000000000ULL) - (4503599627370496.0 + 1023.0);
    const double m = bits_to_double((bits & 0x000fffffffffffffULL) + sqrt_half_bits);
    const double f = m - 1.0;
    const double s = f / (2.0 + f);
    const double z = s * s;
    const double w = z * z;
    const double odd = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    const double even = z * (6.666666666666735130e-01 +
                             w * (2.857142874366239149e-01 + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    const double r = even + odd;
    const double half_f_squared = 0.5 * f * f;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    double result = k * ln2_hi - ((half_f_squared - (s * (half_f_squared + r) + k * ln2_lo)) - f);
    result = x == 0.0 ? -std::numeric_limits<double>::infinity() : result;
    result = x > 1.7976931348623157e308 ? x : result;  // +inf
    return x != x ? x : result;
}

// Note: log_float, the float counterpart of log_double, for logs that are only used in float (a
// float log_softmax's log of the sum). The same reduction and form as log_double, with the series
// in s^2 cut after s^8 (|s| <= 0.1716: the next term is below 3e-9 of the result, a twentieth of an
// ulp), and a float division, which takes a fraction of a double division's time. Measured max error 0.75 ulp over
// every float in [1, 2^24) (0.85 without FMA contraction). log(0) = -inf, log(+inf) = +inf, NaN
// gives NaN; subnormal and negative x are outside the domain, as for log_double.
FASTXENT_MATH float log_float(float x) {
    const std::uint32_t sqrt_half_bits = 0x3f3504f3U;
    const std::uint32_t bits = float_to_bits(x) + (0x3f800000U - sqrt_half_bits);
    const std::int32_t k = static_cast<std::int32_t>(bits >> 23) - 127;
    const float m = bits_to_float((bits & 0x007fffffU) + sqrt_half_bits);
    const float f = m - 1.0f;
    const float s = f / (2.0f + f);
    const float z = s * s;
    const float r = z * (0.666666687f + z * (0.4f + z * (0.285714298f + z * 0.222222224f)));
    const float half_f_squared = 0.5f * f * f;
    const float kf = static_cast<float>(k);
    const float ln2_hi = 0.693145751953125f;  // 22713/32768: kf * ln2_hi is exact
    const float ln2_lo = 1.42860677e-6f;
    float result = kf * ln2_hi - ((half_f_squared - (s * (half_f_squared + r) + kf * ln2_lo)) - f);
    result = x == 0.0f ? -std::numeric_limits<float>::infinity() : result;
    result = x > 3.40282347e38f ? x : result;  // +inf
    return x != x ? x : result;
}

// Note: exp inside a float sum of exponentials, as 2^y. sum_i exp(x_i - max) = sum_i 2^y_i with
// y_i = d_i * log2(e), d_i = x_i - max; then 2^y = 2^n * 2^f, f = y - n in [-1/2, 1/2], with a
// degree-6 polynomial, minimax in relative error under the constraint p(0) = 1 (relative error
// 2.6e-9, 1.1e-7 when evaluated in float; computed by a Remez exchange). The difference d_i is taken
// first: it is exact for the terms that matter, where max * log2(e) would carry an absolute error of
// |max| * 2^-24 into every term (logits of 1e4). y itself is never rounded where FMA is available:
// n comes from d * log2(e) + magic and f from d * log2(e) - n, each one fused operation. Without
// FMA, rounding y costs a relative error of up to |y| * 2^-24 * ln 2 in a term 2^y, largest where
// the term is negligible (|y| = 20 is a term below 1e-6 of the sum's largest, 1), so the sum stays
// within a few ulp either way. With FMA, 12 instructions a vector, the last (2^n times the
// polynomial, added to the sum) fused too. Only for sums: what is written out uses exp_float.
// `lowest` is log(FLT_MIN), so that n >= -126 (see the Note on the lower clamp below).
FASTXENT_MATH float exp_float_in_sum(float d, float lowest) {
    const float log2e = 1.44269504088896341f;
    const float magic = 12583039.0f;  // 1.5 * 2^23 + 127, as in exp_float_clamped
    const float clamped = d < lowest ? lowest : d;
    const float shifted = clamped * log2e + magic;
    const float n = shifted - magic;
    const float f = clamped * log2e - n;
    // 2^f = 1 + f * q(f): the constant term is exactly 1, so that the row's largest term, 2^0, is
    // exactly 1 (a single-class row has loss 0, and no bias accumulates over millions of rows).
    float q = 1.559467782e-04f;
    q = q * f + 1.340664341e-03f;
    q = q * f + 9.617692791e-03f;
    q = q * f + 5.550310388e-02f;
    q = q * f + 2.402265221e-01f;
    q = q * f + 6.931472421e-01f;
    const float p = q * f + 1.0f;
    return p * bits_to_float(float_to_bits(shifted) << 23);
}

// Note: exponentials written out. Every one the kernels write (a softmax, a gradient) is exp(x -
// shift), with shift the row's max (or a chunk's), so the argument is <= 0 or NaN: the upper clamp
// of exp_float (and exp_double) is not needed there. Below, the argument is clamped to
// kExpWrittenFloatLowest (kExpWrittenDoubleLowest), where n = -127 (-1023): the bits of 2^n are
// then all 0, and so is the result, without the final select of exp_float (a compare and a mask).
// The bound is written `shift * 0 + bound`, as for the sums (see the Note on the lower clamp of a
// sum's exponential below): a constant one let GCC turn the clamp back into that compare and mask.
// So each vector takes one instruction fewer. Paired against the select in one process (AVX2):
// float32 softmax of 4096 x 1000 in 0.94 of the time (one and two threads), gradients 0.97-0.99;
// float64 gradients and softmax 0.91-0.97. Results are exp_float's (exp_double's) for x - shift >=
// log(FLT_MIN) (log(DBL_MIN)), and +0 below kExpWritten*Lowest and for -inf; in between, 2^n times
// the polynomial, rounded once: the subnormal result (or 0, where n = -127), where exp_float gives
// 0. With an infinite shift the bound is NaN and nothing is clamped: the terms are then NaN, as is
// the row's sum (a row whose max is +inf has a term inf - inf, one whose max is -inf has no logit
// but -inf and NaN; a chunk of -inf logits is shifted by 0, chunk_shift).
constexpr float kExpWrittenFloatLowest = -88.0f;    // x * log2(e) rounds to n = -127
constexpr double kExpWrittenDoubleLowest = -709.0;  // n = -1023

FASTXENT_MATH float fast_exp(float x, float shift) {
    const float d = x - shift;
    const float lowest = shift * 0.0f + kExpWrittenFloatLowest;
    return exp_float_clamped(d < lowest ? lowest : d);
}

// exp(x - shift) as a term of a sum (see the Notes above); x - shift <= 0 or NaN.
//
// Note: the lower clamp of a sum's exponential. Its bound is written `shift * 0 + bound`, which is the
// bound for every finite shift. A constant bound would let GCC move the clamp to the end, as a compare
// and a blend choosing the constant 2^bound (two instructions a vector); a bound it cannot fold stays
// one max instruction, and the exponential of sums is about 5% faster (10% on 4096 x 1000). For an
// infinite or NaN shift the bound is NaN and nothing is clamped; the sum is NaN then anyway: a row
// whose max is +inf or NaN has a term of inf - inf or NaN, and one whose max is -inf has only -inf
// logits (-inf - -inf is NaN). A chunk of -inf logits is shifted by 0 instead (chunk_shift).
FASTXENT_MATH float exp_in_sum(float x, float shift) {
    return exp_float_in_sum(x - shift, shift * 0.0f + kExpFloatLowest);
}
FASTXENT_MATH double exp_in_sum(double x, double shift) {
    return exp_double_in_sum(x - shift, shift * 0.0 + kExpDoubleLowest);
}
FASTXENT_MATH double fast_exp(double x, double shift) {
    const double d = x - shift;
    const double lowest = shift * 0.0 + kExpWrittenDoubleLowest;
    return exp_double_clamped(d < lowest ? lowest : d);
}

}  // namespace
}  // namespace fastxent
