// Conversions between float and the 16-bit formats (float16, bfloat16), one element or a block at a
// time.
//
// Included by the per-ISA kernel files (through staging.h) and by nll.cpp; everything is in an
// anonymous namespace (see math.h), so each translation unit has the conversions of its own
// instruction set.
#pragma once

#include <cstdint>

#include "math.h"

// F16C's conversions, in the AVX2 and AVX-512 builds (see the Note on float16 with F16C).
#if defined(__F16C__) && defined(__AVX2__)
#define FASTXENT_F16C 1
#include <immintrin.h>
#endif

namespace fastxent {
namespace {

// Note: 16-bit conversions. Branch-free integer code (selects only) that vectorises for every
// instruction set; exact from 16 bits to float, round to nearest even from float to 16 bits, as
// NumPy's and ml_dtypes' casts.
//   float16 -> float: the exponent is rebiased (15 -> 127); infinities and NaN get exponent 255;
//   zeros and subnormals are formed as 2^-14 * (1 + m / 1024) - 2^-14, exactly, without any
//   subnormal float (so a denormals-are-zero mode cannot change them).
//   float -> float16: normal results have 13 mantissa bits rounded off (a carry into the exponent
//   is the correct rounding, up to infinity from 65520 on); subnormal results are rounded by the
//   float adder: |f| + 0.5 has an ulp of 2^-24, the float16 subnormal step, so its low bits are the
//   rounded float16 mantissa. NaN gives the quiet NaN 0x7e00 with the sign kept.
inline float float16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t magnitude = static_cast<std::uint32_t>(h & 0x7fffu) << 13;
    const std::uint32_t exponent = magnitude & 0x0f800000u;
    const std::uint32_t normal = magnitude + (112u << 23);
    const std::uint32_t special = magnitude + (224u << 23);
    const std::uint32_t small = float_to_bits(bits_to_float(magnitude + (113u << 23)) - 6.103515625e-05f);
    const std::uint32_t bits = exponent == 0x0f800000u ? special : exponent == 0u ? small : normal;
    return bits_to_float(bits | sign);
}

inline std::uint16_t float_to_float16(float f) {
    const std::uint32_t bits = float_to_bits(f);
    const std::uint32_t sign = (bits >> 16) & 0x8000u;
    const std::uint32_t magnitude = bits & 0x7fffffffu;
    const std::uint32_t rebiased = magnitude - (112u << 23);
    const std::uint32_t normal = (rebiased + 0x0fffu + ((rebiased >> 13) & 1u)) >> 13;
    const std::uint32_t small = float_to_bits(bits_to_float(magnitude) + 0.5f) - 0x3f000000u;
    const std::uint32_t half = magnitude > 0x7f800000u   ? 0x7e00u
                               : magnitude >= 0x477ff000u ? 0x7c00u
                               : magnitude >= 0x38800000u ? normal
                                                          : small;
    return static_cast<std::uint16_t>(half | sign);
}

// Note: float16 with F16C. Where the instruction set has F16C (the AVX2 and AVX-512 builds), float16
// is converted eight elements at a time by the hardware, in a fraction of the instructions of the
// integer code above (which GCC vectorises, but cannot turn into these instructions):
//   vcvtph2ps (float16 -> float) is exact;
//   vcvtps2ph (float -> float16) rounds to nearest even; a NaN keeps the top bits of its payload
//   there, so NaNs are then replaced by 0x7e00 with their sign, as float_to_float16 gives.
// Neither depends on the flush-to-zero or denormals-are-zero modes (float16 subnormals are normal
// floats, and a float subnormal rounds to a float16 zero either way). Both directions give exactly
// the results of the functions above, so no conversion depends on the instruction set
// (test_every_16_bit_value_is_read_exactly, test_float16_rounding_of_every_kind_of_value); what is
// computed from the converted values may differ in the last bits between instruction sets, as
// float32 results do. The remaining elements, and the other instruction sets, use the functions
// above. Each returns how many elements it converted.
#ifdef FASTXENT_F16C
constexpr bool kFloat16Hardware = true;
#else
constexpr bool kFloat16Hardware = false;
#endif

inline std::int64_t float16_block_to_float(const std::uint16_t* source, std::int64_t count, float* out) {
    std::int64_t i = 0;
#ifdef FASTXENT_F16C
    for (; i + 8 <= count; i += 8) {
        const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i));
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(half));
    }
#else
    (void)source;
    (void)count;
    (void)out;
#endif
    return i;
}

inline std::int64_t float_block_to_float16(const float* values, std::int64_t count, std::uint16_t* out) {
    std::int64_t i = 0;
#ifdef FASTXENT_F16C
    const __m128i quiet = _mm_set1_epi16(0x7e00);
    const __m128i sign = _mm_set1_epi16(static_cast<short>(0x8000));
    for (; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_loadu_ps(values + i);
        const __m128i rounded = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
        const __m128i canonical = _mm_or_si128(_mm_and_si128(rounded, sign), quiet);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_blendv_epi8(rounded, canonical, nan16));
    }
#else
    (void)values;
    (void)count;
    (void)out;
#endif
    return i;
}

inline float bfloat16_to_float(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }

inline std::uint16_t float_to_bfloat16(float f) {
    const std::uint32_t bits = float_to_bits(f);
    const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const std::uint32_t nan = (bits >> 16) | 0x0040u;
    return static_cast<std::uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

}  // namespace
}  // namespace fastxent
