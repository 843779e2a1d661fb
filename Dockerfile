# fastingress: slim Python base, non-root, the console script as entrypoint.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fastingress ./fastingress
COPY workers ./workers
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin fastingress
USER 10001
EXPOSE 80 443 10254
ENTRYPOINT ["fastingress"]
CMD ["controller"]
