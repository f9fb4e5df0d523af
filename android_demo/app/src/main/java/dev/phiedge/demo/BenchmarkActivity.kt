package dev.phiedge.demo

import android.app.Activity
import android.app.ActivityManager
import android.os.Build
import android.os.Bundle
import android.widget.TextView
import dev.phiedge.engine.Json
import dev.phiedge.engine.LatencyBenchmark
import dev.phiedge.engine.LatencyPoint
import dev.phiedge.android.EngineOptions
import dev.phiedge.android.PhiEdge
import java.io.File
import kotlin.concurrent.thread

/**
 * The latency benchmark on the phone, started from adb (android_demo/README.md):
 *
 *     adb shell am start -W -S -n dev.phiedge.demo/.BenchmarkActivity --es package demo \
 *         --ei prompt_len 128 --ei new_tokens 64 --ei threads 2 --ei repeats 5 --es profile low-power
 *
 * One point per start. -S force-stops the app first, so each point runs in a fresh process and its peak RSS and
 * load time are its own, as benchmarks.latency runs each point in a fresh process (without -S, am start reuses a
 * running process and both carry over from the previous point). It writes files/benchmarks/latency-<package>-<time>.json under the app's external
 * files folder, in the layout of `python -m benchmarks.latency --json`, and logs the path (tag phi-edge-benchmark).
 */
class BenchmarkActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val view = TextView(this).apply { text = getString(R.string.benchmark_running) }
        setContentView(view)
        val extras = intent.extras ?: Bundle()
        val name = extras.getString("package", Packages.BUNDLED)
        thread(name = "benchmark") {
            val message = try {
                val d = LatencyPoint()
                val point = LatencyPoint(promptLen = extras.getInt("prompt_len", d.promptLen),
                    newTokens = extras.getInt("new_tokens", d.newTokens), threads = extras.getInt("threads", d.threads),
                    repeats = extras.getInt("repeats", d.repeats), profile = extras.getString("profile", d.profile))
                require(point.profile in listOf("latency", "low-power")) { "profile must be latency or low-power" }
                val options = EngineOptions(threads = point.threads, lowPower = point.profile == "low-power",
                    context = point.context)
                val run = PhiEdge.load(this, Packages.folder(this, name), options).use { model ->
                    require(model.plan.context >= point.context) { "the point needs ${point.context} positions but " +
                        "only ${model.plan.describe()}; close other apps or lower prompt_len/new_tokens" }
                    LatencyBenchmark.measure(model.generator, point)
                }
                val command = "adb shell am start -W -S -n dev.phiedge.demo/.BenchmarkActivity --es package $name " +
                    "--ei prompt_len ${point.promptLen} --ei new_tokens ${point.newTokens} --ei threads ${point.threads} " +
                    "--ei repeats ${point.repeats} --es profile ${point.profile}"
                val report = LatencyBenchmark.report(name, command, machine(), listOf(run))
                val dir = File(getExternalFilesDir(null), "benchmarks").apply { mkdirs() }
                val out = File(dir, "latency-$name-${System.currentTimeMillis() / 1000}.json")
                out.writeText(Json.write(report, indent = 2) + "\n")
                "wrote $out"
            } catch (e: Exception) {
                "error: ${e.message}"
            }
            android.util.Log.i("phi-edge-benchmark", message)
            runOnUiThread { view.text = message }
        }
    }

    /** benchmarks/machine.py's keys, from what Android reports. */
    private fun machine(): Map<String, Any?> {
        val memory = ActivityManager.MemoryInfo()
        (getSystemService(ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(memory)
        val soc = if (Build.VERSION.SDK_INT >= 31) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else Build.HARDWARE
        return linkedMapOf("cpu" to soc, "cores" to Runtime.getRuntime().availableProcessors(),
            "logical_cpus" to Runtime.getRuntime().availableProcessors(), "memory_bytes" to memory.totalMem,
            "system" to "Android ${Build.VERSION.RELEASE} (SDK ${Build.VERSION.SDK_INT})",
            "device" to "${Build.MANUFACTURER} ${Build.MODEL}", "abi" to Build.SUPPORTED_ABIS[0],
            "onnxruntime" to ai.onnxruntime.OrtEnvironment.getEnvironment().version)
    }
}
