package dev.phiedge.engine

import java.util.SplittableRandom

/** Mirrors runtime/sampling.py: greedy, or repetition penalty -> temperature -> top-k -> top-p -> draw. */
data class SamplingConfig(
    val temperature: Double = 0.7,  // 0: greedy (argmax)
    val topK: Int = 0,  // keep the k most likely tokens; 0: all
    val topP: Double = 0.95,  // keep the smallest set whose probability reaches topP; 1: all
    val seed: Long? = null,  // null: a fresh seed each call
    val repetitionPenalty: Double = 1.0,  // > 1 discourages tokens already in the prompt or the reply (CTRL, HF)
) {
    init {
        require(temperature == 0.0 || normal(temperature)) {
            "temperature must be 0 (greedy) or a number from $FLOAT32_TINY to $FLOAT32_MAX (float32's normal range), " +
                "got $temperature" }
        require(topK >= 0) { "top-k must be an integer >= 0 (0 keeps every token), got $topK" }
        require(topP > 0 && topP <= 1) { "top-p must be a number in (0, 1] (1 keeps every token), got $topP" }
        require(normal(repetitionPenalty)) {
            "repetition penalty must be a number from $FLOAT32_TINY to $FLOAT32_MAX (1 is off), got $repetitionPenalty" }
    }

    val greedy: Boolean get() = temperature == 0.0

    companion object {
        /** Temperature and penalty divide float32 logits: 0 (greedy temperature) or float32's normal range, as
         *  runtime/sampling.py and js/sampling.js refuse the same values. */
        const val FLOAT32_TINY = 1.1754943508222875E-38  // Float.MIN_NORMAL
        const val FLOAT32_MAX = 3.4028234663852886E38  // Float.MAX_VALUE

        fun normal(x: Double): Boolean = x >= FLOAT32_TINY && x <= FLOAT32_MAX  // false for NaN
    }
}

/**
 * Top-k / top-p without a sort (runtime/sampling.py): weights e = exp((logit - max) / T) as floats, whose bit
 * patterns order as their values do, so the top 16 bits name a bucket of values within 1/128 of each other.
 * Counts (top-k) or weight (top-p) per bucket locate the bucket where the kept prefix ends; only that bucket is
 * sorted, as longs (value bits, id), so nothing is boxed. Buffers are reused across calls.
 */
class Weights {
    private val count = IntArray(INF_BUCKET + 1)
    private val mass = DoubleArray(INF_BUCKET + 1)
    private var e = FloatArray(0)
    private var band = LongArray(0)

    /** (vocab) unnormalized probabilities after temperature, top-k and top-p; 0 outside the kept set. Reused. */
    fun of(logits: FloatArray, config: SamplingConfig): FloatArray {
        val n = logits.size
        if (e.size != n) e = FloatArray(n)
        var max = Float.NEGATIVE_INFINITY
        for (x in logits) if (x > max) max = x
        val t = config.temperature.toFloat()
        // The largest logits get weight 1 even when they are +inf (a penalty's quotient can overflow), and -inf
        // (suppressed ids) gets 0 at any temperature, as runtime/sampling.py's weights().
        for (i in 0 until n) e[i] = if (logits[i] == max) 1f else Math.exp(((logits[i] - max) / t).toDouble()).toFloat()
        if (config.topK in 1 until n) keepPrefix(config.topK, 0.0)
        if (config.topP < 1) {
            var total = 0.0
            for (w in e) total += w
            keepPrefix(0, config.topP * total)
        }
        return e
    }

    /** Zeroes all but top-k's [k] largest (and their ties) or top-p's fewest entries reaching [target]. */
    private fun keepPrefix(k: Int, target: Double) {
        count.fill(0)
        mass.fill(0.0)
        for (w in e) {
            val b = bucket(w)
            count[b]++
            mass[b] += w.toDouble()
        }
        var end = INF_BUCKET  // the bucket where the prefix ends, scanning from the largest values down
        var seen = 0
        var before = 0.0
        while (end > 0 && (if (target > 0) before + mass[end] < target else seen + count[end] < k)) {
            seen += count[end]
            before += mass[end]
            end--
        }
        var m = 0
        if (band.size < count[end]) band = LongArray(count[end])
        for (i in e.indices) if (bucket(e[i]) == end) band[m++] = (Int.MAX_VALUE - e[i].toRawBits()).toLong() shl 32 or i.toLong()
        java.util.Arrays.sort(band, 0, m)  // descending weight, ties by id
        var cut = m
        if (target > 0) {  // top-p
            var cum = before
            for (j in 0 until m) {  // the entry that reaches the target stays
                cum += e[band[j].toInt()]
                if (cum >= target) { cut = j + 1; break }
            }
        }
        if (target > 0) {
            for (j in cut until m) e[band[j].toInt()] = 0f
            for (i in e.indices) if (bucket(e[i]) < end) e[i] = 0f
        } else {
            val threshold = e[band[k - seen - 1].toInt()]  // top-k keeps ties with its last entry, as transformers
            for (i in e.indices) if (e[i] < threshold) e[i] = 0f
        }
    }

    companion object {
        const val INF_BUCKET = 0x7F80  // float +inf's bucket; weights are finite and >= 0
        fun bucket(w: Float): Int = w.toRawBits() ushr 16
    }
}

/** (candidate ids, their probabilities), most likely first, after temperature, top-k and top-p. */
fun probabilities(logits: FloatArray, config: SamplingConfig): Pair<IntArray, DoubleArray> {
    val w = Weights().of(logits, config)
    val ids = w.indices.filter { w[it] > 0 }.sortedWith { a, b -> if (w[a] != w[b]) w[b].compareTo(w[a]) else a - b }
    var sum = 0.0
    for (i in ids) sum += w[i]
    return ids.toIntArray() to DoubleArray(ids.size) { w[ids[it]] / sum }
}

/**
 * Draws tokens for one generation call; the same seed and logits give the same tokens (on the JVM). [suppress]
 * marks ids that are never drawn: embedding rows the tokenizer has no token for (a padded vocabulary).
 */
class Sampler(val config: SamplingConfig, private val suppress: BooleanArray? = null) {
    private val rng = SplittableRandom(config.seed ?: System.nanoTime())
    private val weights = Weights()
    private var seen: BooleanArray? = null
    private val pending = ArrayList<Int>()

    /** Records context tokens (the prompt, then each new token) for the repetition penalty. */
    fun observe(ids: IntArray) {
        if (config.repetitionPenalty != 1.0) for (id in ids) pending.add(id)
    }

    /** CTRL's penalty as transformers applies it: positive logits divided by it, negative ones multiplied. */
    fun penalize(logits: FloatArray): FloatArray {
        if (config.repetitionPenalty == 1.0) return logits
        val s = seen ?: BooleanArray(logits.size).also { seen = it }
        for (id in pending) s[id] = true
        pending.clear()
        val penalty = config.repetitionPenalty.toFloat()  // numpy: a float32 row and a Python float stay float32
        val out = logits.copyOf()
        for (i in out.indices) if (s[i]) out[i] = if (out[i] > 0) out[i] / penalty else out[i] * penalty  // may be +inf
        return out
    }

    /** The penalized row with suppressed ids at -inf; refuses a row with nothing that may be drawn. */
    private fun prepare(row: FloatArray): FloatArray {
        var logits = penalize(row)
        if (suppress != null) {
            if (logits === row) logits = row.copyOf()
            for (i in logits.indices) if (i < suppress.size && suppress[i]) logits[i] = Float.NEGATIVE_INFINITY
        }
        var best = Float.NEGATIVE_INFINITY
        var nan = false
        for (x in logits) { if (x.isNaN()) nan = true else if (x > best) best = x }
        if (nan || best == Float.NEGATIVE_INFINITY) throw IllegalArgumentException(
            "the model returned no usable logits (NaN, or -inf for every token it may emit); the package is " +
                "damaged or its weights diverged, re-export it")
        return logits
    }

    fun sample(row: FloatArray): Int {
        val logits = prepare(row)
        if (config.greedy) return argmax(logits)
        return draw(weights.of(logits, config))
    }

    /**
     * The token at a position a drafter guessed [draft] for: [draft] when accepted, otherwise a replacement.
     * Greedy accepts only the argmax; sampling accepts with probability p(draft) and otherwise draws from p
     * without [draft]: speculative sampling's rule for a certain draft, so the token's distribution is p.
     */
    fun verify(row: FloatArray, draft: Int): Int {
        val logits = prepare(row)
        if (config.greedy) return argmax(logits)
        val w = weights.of(logits, config)
        var total = 0.0
        for (x in w) total += x
        if (rng.nextDouble() * total < w[draft]) return draft
        w[draft] = 0f
        return draw(w)
    }

    /** One id with probability w / sum(w): the first, in id order, whose cumulative weight exceeds the draw. */
    private fun draw(w: FloatArray): Int {
        var total = 0.0
        for (x in w) total += x
        val r = rng.nextDouble() * total
        var cum = 0.0
        var last = 0
        for (i in w.indices) {
            if (w[i] == 0f) continue
            cum += w[i]
            if (cum > r) return i
            last = i
        }
        return last  // the product may round up to the total
    }

    companion object {
        /** The first index of the largest value, as numpy.argmax. */
        fun argmax(x: FloatArray): Int {
            var best = 0
            for (i in 1 until x.size) if (x[i] > x[best]) best = i
            return best
        }
    }
}
