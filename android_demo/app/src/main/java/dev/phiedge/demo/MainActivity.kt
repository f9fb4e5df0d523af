package dev.phiedge.demo

import android.app.Activity
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.Spinner
import android.widget.Switch
import android.widget.TextView
import dev.phiedge.engine.CancelFlag
import dev.phiedge.engine.ChatSession
import dev.phiedge.engine.GenerationCallback
import dev.phiedge.engine.GenerationConfig
import dev.phiedge.engine.SamplingConfig
import dev.phiedge.engine.StatsKeys
import dev.phiedge.engine.TextGenerator
import java.util.concurrent.Executors

/**
 * Prompt box, prompt format, streaming output, stop button, stats line and settings. The UI talks to the engine
 * only through TextGenerator.generate(..., GenerationCallback): text pieces, stats, error.
 */
class MainActivity : Activity(), GenerationCallback {
    private val worker = Executors.newSingleThreadExecutor()  // loads and generates; never the UI thread
    private val ui = Handler(Looper.getMainLooper())
    private var model: TextGenerator? = null
    private var loadedKey: String? = null
    private var cancel: CancelFlag? = null
    private var chat: ChatSession? = null  // the "chat" format keeps the conversation in the KV cache

    private lateinit var prompt: EditText
    private lateinit var output: TextView
    private lateinit var stats: TextView
    private lateinit var run: Button
    private lateinit var stop: Button
    private lateinit var packageChoice: Spinner
    private lateinit var template: Spinner
    private lateinit var threads: EditText
    private lateinit var maxNewTokens: EditText
    private lateinit var temperature: EditText
    private lateinit var lowPower: Switch

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        prompt = findViewById(R.id.prompt)
        output = findViewById(R.id.output)
        stats = findViewById(R.id.stats)
        run = findViewById(R.id.run)
        stop = findViewById(R.id.stop)
        packageChoice = findViewById(R.id.package_choice)
        template = findViewById(R.id.template)
        threads = findViewById(R.id.threads)
        maxNewTokens = findViewById(R.id.max_new_tokens)
        temperature = findViewById(R.id.temperature)
        lowPower = findViewById(R.id.low_power)
        packageChoice.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, Packages.list(this))
        // The phi-1.5 report's prompt formats, as the manifest names them.
        template.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item,
            listOf("completion", "code", "qa", "chat", "instruct"))
        run.setOnClickListener { start() }
        stop.setOnClickListener { cancel?.set() }
        stop.isEnabled = false
    }

    private fun start() {
        val options = try {
            EngineOptions(threads = threads.text.toString().toInt(), lowPower = lowPower.isChecked)
        } catch (e: Exception) {
            return onError(e)
        }
        val config = try {
            val t = temperature.text.toString().toDouble()
            GenerationConfig(maxNewTokens = maxNewTokens.text.toString().toInt(),
                sampling = SamplingConfig(temperature = t, topP = if (t == 0.0) 1.0 else 0.95))
        } catch (e: Exception) {
            return onError(e)
        }
        val name = packageChoice.selectedItem as String
        val text = prompt.text.toString()
        val format = template.selectedItem as String
        val flag = CancelFlag().also { cancel = it }
        if (format == "chat") output.append(if (output.text.isEmpty()) "Alice: $text\nBob:" else "\nAlice: $text\nBob:")
        else output.text = ""
        stats.text = getString(R.string.loading)
        run.isEnabled = false
        stop.isEnabled = true
        worker.execute {
            try {
                val key = "$name/$options"
                if (loadedKey != key) {
                    model?.backend?.close()
                    model = null
                    val folder = Packages.folder(this, name)
                    model = TextGenerator.load(folder) { OrtBackend(it, options) }
                    loadedKey = key
                    chat = null
                }
                if (format == "chat") {
                    val session = chat ?: model!!.chat().also { chat = it }
                    onStats(session.send(text, config, ::onText, flag).stats.toJson())
                } else {
                    chat = null
                    model!!.generate(text, config, format, this, flag)
                }
            } catch (e: Exception) {
                onError(e)
            }
            ui.post { run.isEnabled = true; stop.isEnabled = false }
        }
    }

    override fun onText(piece: String) {
        ui.post { output.append(piece) }
    }

    override fun onStats(stats: Map<String, Any?>) {
        fun num(key: String, scale: Double = 1.0, digits: Int = 1) =
            (stats[key] as? Number)?.let { "%.${digits}f".format(it.toDouble() * scale) } ?: "-"
        val line = "TTFT ${num(StatsKeys.TTFT_S, 1000.0)} ms · ${num(StatsKeys.DECODE_TOKENS_PER_S)} tok/s · " +
            "${num(StatsKeys.CPU_S_PER_TOKEN, 1000.0, 2)} CPU ms/token · " +
            "${num(StatsKeys.PEAK_RSS_BYTES, 1.0 / (1 shl 20), 0)} MiB · ${stats[StatsKeys.FINISH_REASON]}"
        ui.post { this.stats.text = line }
    }

    override fun onError(error: Throwable) {
        ui.post { stats.text = getString(R.string.error, error.message ?: error.toString()) }
    }

    override fun onDestroy() {
        cancel?.set()
        worker.execute { model?.backend?.close() }
        worker.shutdown()
        super.onDestroy()
    }
}
